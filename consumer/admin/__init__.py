"""Operator commands: a connector's lifecycle on a portal, the bundled schemas, `dlq redrive`."""
