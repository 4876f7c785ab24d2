"""The benchmark: the service (Engine) vs a naive consumer on the same workload (`make bench`)."""
