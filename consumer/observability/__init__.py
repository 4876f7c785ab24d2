"""What operators see: metrics, librdkafka statistics, the probes and tracing."""
