"""A faithful re-implementation of the notebook recipe lorabudget replaces (for side-by-side benchmarks).

What the course notebooks did, step by step:
* ``datasets.map(lambda b: tokenizer(b["text"], truncation=True, padding=True), batched=True)``: every
  row padded to the longest row of its 1,000-row map chunk;
* ``AutoModelForSequenceClassification`` + PEFT ``LoraConfig(task_type="SEQ_CLS")`` (the model's
  default head), trained by the Hugging Face ``Trainer`` with batch 16 in fp32;
* predictions from a hand-written loop, batches of 8 pre-padded rows, through the unmerged PEFT model.

This file is benchmark code, not part of the package.
"""

from __future__ import annotations

import tempfile
import time
from typing import Sequence

import numpy as np
import torch


def tokenize_like_notebook(tokenizer, texts: Sequence[str], labels=None, max_length=None):
    from datasets import Dataset

    data = {"text": list(texts)}
    if labels is not None:
        data["label"] = [int(x) for x in labels]
    ds = Dataset.from_dict(data)

    def preprocess(examples):
        kwargs = {"max_length": max_length} if max_length else {}
        return tokenizer(examples["text"], truncation=True, padding=True, **kwargs)

    return ds.map(preprocess, batched=True, remove_columns=["text"], load_from_cache_file=False)


def padded_fraction(ds) -> float:
    """Fraction of token positions that are padding in a pre-padded dataset."""
    masks = ds["attention_mask"]
    total = sum(len(m) for m in masks)
    real = sum(sum(m) for m in masks)
    return 1.0 - real / total


def build_model(model_dir: str, num_labels: int, r=8, alpha=16, dropout=0.1, modules=("query", "value")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=list(modules), task_type="SEQ_CLS"
    )
    return get_peft_model(model, config)


def build_model_from_config(config, r=8, alpha=16, dropout=0.1, modules=("query", "value")):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(config)
    lora = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=list(modules), task_type="SEQ_CLS"
    )
    return get_peft_model(model, lora)


def train_like_notebook(
    model, tokenizer, train_ds, epochs=2.0, batch_size=16, learning_rate=5e-4, max_steps=-1, seed=42
):
    """HF Trainer, fp32, batch 16, no evaluation during training. Returns (seconds, rows trained)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            num_train_epochs=epochs,
            max_steps=max_steps,
            learning_rate=learning_rate,
            eval_strategy="no",
            save_strategy="no",
            report_to=[],
            logging_steps=50,
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tokenizer)
        )
        start = time.perf_counter()
        result = trainer.train()
        elapsed = time.perf_counter() - start
    steps = result.global_step
    return elapsed, min(len(train_ds) * epochs, steps * batch_size) if max_steps < 0 else steps * batch_size


@torch.no_grad()
def predict_like_notebook(model, tokenizer, ds, batch_size=8) -> np.ndarray:
    """The notebook's loop: batches of 8 pre-padded rows through the unmerged PEFT model. Logits [n, C]."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    device = next(model.parameters()).device
    cols = [c for c in ds.column_names if c in ("input_ids", "attention_mask")]
    loader = DataLoader(ds.select_columns(cols), batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    model.eval()
    out = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(out)
