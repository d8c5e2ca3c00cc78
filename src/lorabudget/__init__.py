"""lorabudget: LoRA fine-tuning of transformer encoders under a hard trainable-parameter budget."""

__version__ = "0.1.0"
