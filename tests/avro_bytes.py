"""Hand-made Avro bytes for tests that build records (or corrupt them) byte by byte."""

from __future__ import annotations


def zigzag(n: int) -> bytes:
    """`n` as Avro's zigzag varint (minimal, as fastavro's writer encodes it)."""
    n = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)
