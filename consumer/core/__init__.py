"""The pure core: the event contract, admission, the fold, the mapping to calls, chat state.

No I/O, no clock of its own and nothing of `consumer` outside this package
(`tests/unit/test_layers.py` holds it)."""
