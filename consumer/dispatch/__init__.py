"""Sending the engine's batches to Bitrix24: an asyncio loop on a thread of its own, each
portal with its own connection pool, slots, rate limit share and circuit breaker."""
