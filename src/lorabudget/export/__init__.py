"""Shipping a run: export to transformers, PEFT or ONNX folders, and the model card that goes with them.
Depends on ``inference``."""
