"""Offline fixtures: tiny random RoBERTa and BERT models with in-memory tokenizers, synthetic data.

Nothing here touches the network or ../shared. Models are saved to temporary folders so the code
under test loads them exactly as it loads a user's local model directory.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CLASS_WORDS = {
    0: ["president", "election", "minister", "war", "embassy", "treaty", "parliament", "refugees"],
    1: ["game", "team", "score", "match", "coach", "season", "league", "playoff"],
    2: ["market", "stocks", "profit", "shares", "earnings", "bank", "merger", "investors"],
    3: ["software", "internet", "computer", "chip", "space", "science", "wireless", "research"],
}
FILLER = ["the", "a", "of", "to", "in", "on", "and", "said", "today", "new", "after", "over", "its", "for"]
VOCAB_WORDS = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))


def synthetic_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Rows whose class is signalled by keywords among filler words, lengths varying 4..40 words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 4
        length = rng.randint(4, 40)
        words = [rng.choice(FILLER) for _ in range(length)]
        for _ in range(max(2, length // 2)):
            words[rng.randrange(length)] = rng.choice(CLASS_WORDS[label])
        rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


def make_tokenizer(kind: str):
    """A word-level fast tokenizer with the special tokens of ``kind`` ('roberta' or 'bert')."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        bos, eos, pad, unk, mask = specials
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        pad, unk, bos, eos, mask = specials
    vocab = {tok: i for i, tok in enumerate(specials + VOCAB_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        mask_token=mask,
        cls_token=bos,
        sep_token=eos,
        model_max_length=128,
    )


def make_model_dir(path: Path, kind: str, hidden_size: int = 32, intermediate_size: int = 48) -> Path:
    import torch
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    tokenizer = make_tokenizer(kind)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=intermediate_size,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    torch.manual_seed(0)
    if kind == "roberta":
        model = RobertaModel(RobertaConfig(**common, max_position_embeddings=132, pad_token_id=1, type_vocab_size=1))
    else:
        model = BertModel(BertConfig(**common, max_position_embeddings=130, pad_token_id=0))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def write_csv(path: Path, rows, header=None) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """train.csv (240 rows, text,label), test.csv (80 labelled rows), unlabelled.csv (text only)."""
    d = tmp_path_factory.mktemp("data")
    write_csv(d / "train.csv", synthetic_rows(240, seed=1))
    test = synthetic_rows(80, seed=2)
    write_csv(d / "test.csv", test)
    write_csv(d / "unlabelled.csv", [(t,) for t, _ in test], header=["text"])
    return d


@pytest.fixture
def tiny_config(tiny_roberta, data_dir, tmp_path):
    """A small, fast run config dict on the tiny RoBERTa."""

    def make(**sections):
        values = {
            "name": "tiny",
            "model": {
                "name": str(tiny_roberta),
                "max_length": 64,
                "labels": ["World", "Sports", "Business", "Sci/Tech"],
            },
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": ["query", "value"]},
            "data": {"train": str(data_dir / "train.csv"), "validation_size": 40, "cache_dir": str(tmp_path / "cache")},
            "training": {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "log_every": 2, "seed": 7},
        }
        for section, overrides in sections.items():
            if isinstance(overrides, dict):
                values.setdefault(section, {}).update(overrides)
            else:
                values[section] = overrides
        return values

    return make


@pytest.fixture
def padded_batch():
    """``make(seed=0, vocab=40)`` -> (input ids [4, 12], attention mask): a small batch with two padded rows."""
    import torch

    def make(seed: int = 0, vocab: int = 40):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, vocab, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        mask[3, 5:] = 0
        return ids, mask

    return make
