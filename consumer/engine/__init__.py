"""The engine: one poll loop that reads the source partitions, folds each chat's events into
its state, plans and commits the calls, and restores a partition's chats from the changelog
when it is assigned (`engine.Engine` is the entry point)."""
