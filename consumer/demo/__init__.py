"""`make demo`: traffic like real producers send, the simulator, the consumer, and the
operators' side coming back."""
