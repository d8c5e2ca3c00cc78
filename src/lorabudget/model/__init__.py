"""The model: loading encoders (hub, local folders, packaged weights), placing adapters, the exact trainable
budget, FLOP counts, numeric precision and fast dropout. Depends on ``config`` and ``methods``."""
