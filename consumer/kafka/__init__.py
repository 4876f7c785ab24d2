"""Kafka plumbing: client configurations, the service's topics, record headers, the
transactional writer, the token topic and partition reads for restores."""
