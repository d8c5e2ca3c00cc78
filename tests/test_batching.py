import numpy as np
import torch

from lorabudget.batching import (
    LengthGroupedBatchSampler, PadCollator, length_sorted_batches, tokenize,
)
from lorabudget.inference import predict_logits

from conftest import make_tokenizer


def test_sampler_covers_every_row_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=1000)
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1, bucket_batches=10)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000)) and len(batches) == len(sampler)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    plain = LengthGroupedBatchSampler(lengths, 16, seed=1, length_grouping=False)
    plain_padded = sum(len(b) * lengths[b].max() for b in plain)
    assert padded < 0.75 * plain_padded  # grouping really cuts padding
    # deterministic per (seed, epoch), different across epochs
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_collator_pads_to_batch_longest_and_keeps_index():
    tok = make_tokenizer("roberta")
    tokens = tokenize(tok, ["game team", "the market said stocks rose today", "chip"], max_length=64)
    labels = np.array([1, 2, 3])
    batch = PadCollator(tokens, tok.pad_token_id, labels)([2, 0])
    assert batch["input_ids"].shape == (2, 4)  # "game team" + <s> </s>
    assert batch["index"].tolist() == [2, 0] and batch["labels"].tolist() == [3, 1]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["input_ids"][0, 3].item() == tok.pad_token_id


def test_tokenize_truncates_and_caches(tmp_path):
    tok = make_tokenizer("bert")
    texts = ["game " * 100, "chip"]
    first = tokenize(tok, texts, max_length=16, cache_dir=tmp_path)
    assert first.lengths.tolist() == [16, 3]
    files = list((tmp_path / "tokens").glob("*.npz"))
    assert len(files) == 1
    again = tokenize(tok, texts, max_length=16, cache_dir=tmp_path)
    assert np.array_equal(again.ids, first.ids)
    # other texts or other max_length: other entries
    tokenize(tok, texts, max_length=8, cache_dir=tmp_path)
    tokenize(tok, ["chip"], max_length=16, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 3
    # concatenation equals tokenizing both lists at once
    both = first.concat(tokenize(tok, ["chip", "game"], max_length=16))
    whole = tokenize(tok, texts + ["chip", "game"], max_length=16)
    assert np.array_equal(both.ids, whole.ids) and np.array_equal(both.offsets, whole.offsets)
    # a truncated cache file is rebuilt, not trusted
    files[0].write_bytes(files[0].read_bytes()[:20])
    rebuilt = tokenize(tok, texts, max_length=16, cache_dir=tmp_path)
    assert np.array_equal(rebuilt.ids, first.ids)


def test_inference_restores_input_order():
    tok = make_tokenizer("roberta")
    texts = ["game", "the market said stocks rose today again", "chip space", "a " * 30]
    tokens = tokenize(tok, texts, max_length=64)

    class LengthModel(torch.nn.Module):
        """Logits that reveal which row they came from: [real length, first token id]."""

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            out = torch.stack([attention_mask.sum(1).float(), input_ids[:, 1].float()], 1)
            return type("O", (), {"logits": out})()

    logits = predict_logits(LengthModel(), tokens, tok.pad_token_id, batch_size=2)
    assert logits[:, 0].tolist() == tokens.lengths.tolist()
    assert logits[:, 1].tolist() == [tokens.row(i)[1] for i in range(len(texts))]
    assert length_sorted_batches(tokens.lengths, 2)[0] == [3, 1]


def test_token_budget_keeps_long_rows_in_small_batches():
    lengths = np.array([300, 40, 41, 42, 43, 44, 45, 46, 47, 48])
    batches = length_sorted_batches(lengths, batch_size=4, max_tokens=400)
    assert batches[0] == [0]  # 300 tokens: a second row would make 600 positions
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len(b) <= 4 and len(b) * lengths[b[0]] <= 400 or len(b) == 1 for b in batches)
    assert length_sorted_batches(lengths, batch_size=4)[0] == [0, 9, 8, 7]
