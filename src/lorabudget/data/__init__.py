"""Data in: reading labelled and unlabelled text files or hub datasets, tokenizing with a cache, and batching
by length. Depends on ``config``."""
