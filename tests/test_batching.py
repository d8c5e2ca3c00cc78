import numpy as np
import pytest
import torch
from conftest import make_tokenizer

from lorabudget.data.batching import (
    LengthGroupedBatchSampler,
    PadCollator,
    length_sorted_batches,
    tokenize,
)
from lorabudget.inference.batched import predict_logits


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


# --------------------------------------------------------------------------------------------
# Bucketed widths and row chunks


def test_bucket_ladder():
    from lorabudget.data.batching import bucket_widths, bucketed

    assert bucket_widths(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    ladder = bucket_widths(512)
    assert ladder[-1] == 512 and ladder[8:] == [160, 192, 224, 256, 320, 384, 448, 512]
    assert all(w % 16 == 0 for w in ladder) and ladder == sorted(set(ladder))
    assert all(b - a <= max(16, a // 4) for a, b in zip(ladder, ladder[1:]))  # at most a quarter more padding
    assert bucket_widths(100) == [16, 32, 48, 64, 80, 96, 100]  # the cap is the longest row, never beyond
    assert bucket_widths(5) == [5]
    assert bucket_widths(128, 8) == [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128]  # inference's finer ladder
    assert bucketed(np.array([1, 16, 17, 100, 128]), bucket_widths(128)).tolist() == [16, 16, 32, 112, 128]


def test_every_batch_width_is_a_bucket_width():
    from lorabudget.data.batching import bucket_widths, inference_loader, train_loader

    tok = make_tokenizer("roberta")
    rng = np.random.default_rng(3)
    texts = [" ".join(["game"] * int(n)) for n in rng.integers(1, 90, size=300)]
    tokens = tokenize(tok, texts, max_length=70)
    labels = np.zeros(len(texts), dtype=np.int64)
    seen = set()
    for inference, loader in (
        (False, train_loader(tokens, labels, tok.pad_token_id, 16, seed=0)),
        (True, inference_loader(tokens, tok.pad_token_id, 32, max_tokens=512)),
    ):
        widths = bucket_widths(int(tokens.lengths.max()), 8 if inference else 16)
        assert widths[-1] == 70
        for batch in loader:
            rows, width = batch["input_ids"].shape
            longest = int(batch["attention_mask"].sum(1).max())
            assert width in widths and width <= 70 and longest <= width
            assert width == min(w for w in widths if w >= longest)  # the smallest bucket that holds the batch
            seen.add(width)
            if inference:  # the token cap counts the bucketed width
                assert rows * width <= 512 or rows == 1
    assert len(seen) > 3


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_bucketed_padding_gives_the_same_logits(kind, tiny_roberta, tiny_bert):
    from lorabudget.config import from_dict
    from lorabudget.model.build import build_model

    model_dir = tiny_roberta if kind == "roberta" else tiny_bert
    for head in ("full", "linear"):
        cfg = from_dict(
            {
                "model": {"name": str(model_dir)},
                "head": {"type": head, "pooling": "mean"},
                "adapter": {"r": 4, "alpha": 8, "modules": ["query", "value"]},
            }
        )
        model = build_model(cfg).model.eval()
        tok = make_tokenizer(kind)
        texts = ["game team score", "the market said stocks rose today", "chip", "a " * 40]
        tokens = tokenize(tok, texts, max_length=64)
        tight = PadCollator(tokens, tok.pad_token_id)  # exact longest row
        with torch.inference_mode():
            for rows in ([0, 1, 2], [3, 2], [1]):
                exact = model(**{k: v for k, v in tight(rows).items() if k in ("input_ids", "attention_mask")}).logits
                padded = predict_logits(model, tokens, tok.pad_token_id, batch_size=4)[rows]
                np.testing.assert_allclose(padded, exact.numpy(), rtol=1e-4, atol=1e-5)


def test_split_rows_caps_positions_and_keeps_the_gradient(tiny_roberta):
    from lorabudget.config import from_dict
    from lorabudget.data.batching import position_cap, split_rows
    from lorabudget.model.build import build_model

    tok = make_tokenizer("roberta")
    rng = np.random.default_rng(0)
    texts = [
        " ".join(rng.choice(["game", "team", "market", "chip", "the"], size=int(n))) for n in rng.integers(3, 30, 10)
    ]
    tokens = tokenize(tok, texts, max_length=64)
    batch = PadCollator(tokens, tok.pad_token_id, np.arange(10) % 4, widths=[16, 32])(list(range(10)))
    assert batch["input_ids"].shape == (10, 32)
    parts = split_rows(batch, max_positions=100)  # 3 rows of 32 fit: 4 chunks, as even as possible
    assert [p["input_ids"].shape[0] for p, _ in parts] == [3, 3, 2, 2]
    assert all(p["input_ids"].numel() <= 100 for p, _ in parts)
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    assert torch.equal(torch.cat([p["index"] for p, _ in parts]), batch["index"])
    assert split_rows(batch, None) == [(batch, 1.0)] and split_rows(batch, 320) == [(batch, 1.0)]
    assert [p["input_ids"].shape[0] for p, _ in split_rows(batch, 200)] == [5, 5]  # even halves, not 6 + 4
    assert position_cap(None, "cpu") == 768 and position_cap(None, "cuda") is None and position_cap(0, "cpu") is None
    assert position_cap(None, "cpu", bf16=True) == 1024 and position_cap(None, "cuda", bf16=True) is None

    cfg = from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"r": 4, "alpha": 8, "dropout": 0.0}})
    model = build_model(cfg).model.eval()  # eval: no dropout, so both ways compute the same function

    def grads(max_positions):
        model.zero_grad()
        for part, share in split_rows(batch, max_positions):
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            (torch.nn.functional.cross_entropy(logits, part["labels"]) * share).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    whole, chunked = grads(None), grads(100)
    assert whole.keys() == chunked.keys()
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-6)
