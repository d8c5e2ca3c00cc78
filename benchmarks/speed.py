"""Speed: lorabudget's training loop and `predict` vs the notebook recipe, side by side.

Same machine, same model, same LoRA placement (r=8, alpha=16, query+value, the model's own head), same
real AG News rows, same maximum length (512, the notebook's truncation). Each measurement runs in
its own subprocess (so peak memory is per side) and the sides alternate, A B A B, so drift hits both.

* full mode: the exact roberta-base shape (random weights) with the real tokenizer from
  ../shared/data/roberta-base-tokenizer/.
* --quick: a 4-layer, hidden-256 RoBERTa with the same tokenizer, plus the scaling table (cost for
  1k/2k/4k training rows and 1k/4k/8k predictions) and what each inference lever buys.
* --tiny: a seconds-long smoke run (used by the test suite to prove the script works, not to time it).

Usage: python benchmarks/speed.py [--quick|--tiny] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402

SIZES = {
    "full": dict(train_rows=192, predict_rows=384),
    "quick": dict(train_rows=512, predict_rows=1024),
    "tiny": dict(train_rows=32, predict_rows=64),
}
MAX_LENGTH = 512
MAP_CHUNK = 1000  # datasets.map's default batch size: the notebook pads each row to its chunk's longest


def make_model_dir(out: Path, mode: str, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, RobertaModel

    config = AutoConfig.from_pretrained(tokenizer_dir)
    if mode != "full":
        layers, hidden = (4, 256) if mode == "quick" else (1, 64)
        config.update(dict(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=4 * hidden,
                           num_attention_heads=4))
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(str(out))
    return out


def read_texts(path: Path, n: int):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(t, int(l)) for t, l in csv.reader(fh)]
    while len(rows) < n:
        rows = rows + rows
    return rows[:n]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# Workers: one measurement per process


def worker_ours_train(model_dir: str, rows, pool, tmp: Path, batch_size: int, length_grouping: bool = True) -> dict:
    from lorabudget.config import from_dict
    from lorabudget.train import train

    with open(tmp / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows + rows[:16])  # 16 extra rows are the validation split
    cfg = from_dict({
        "name": "bench", "model": {"name": model_dir, "max_length": MAX_LENGTH},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.1, "modules": ["query", "value"]},
        "data": {"train": str(tmp / "train.csv"), "validation_size": 16, "split_seed": 0, "cache_dir": str(tmp / "cache")},
        "training": {"epochs": 1, "batch_size": batch_size, "log_every": 1000, "eval_batch_size": 64,
                     "length_grouping": length_grouping},
        "budget": {"max_trainable_params": 10**9},
    })
    summary = train(cfg, tmp / "run", log=lambda *_: None)
    lines = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    train_line = [l for l in lines if l["type"] == "train"][-1]
    return {"seconds": summary["train_time_s"], "rows": summary["train_rows"],
            "real_tokens_per_s": summary["tokens_per_s"], "padded_fraction": summary.get("padded_fraction"),
            "loss": train_line["loss"]}


def notebook_rows(tok, rows, pool, labelled: bool):
    """The measured rows as the notebook would see them: tokenized by ``datasets.map`` over the whole
    data set, so each row is padded to the longest row of its 1,000-row map chunk (``pool`` holds the
    measured rows first, then the rest of their chunk)."""
    import notebook_recipe as nb

    texts = [t for t, _ in pool]
    labels = [l for _, l in pool] if labelled else None
    return nb.tokenize_like_notebook(tok, texts, labels).select(range(len(rows)))


def worker_notebook_train(model_dir: str, rows, pool, tmp: Path, batch_size: int) -> dict:
    import notebook_recipe as nb
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = notebook_rows(tok, rows, pool, labelled=True)
    model = nb.build_model(model_dir, 4)
    seconds, _ = nb.train_like_notebook(model, tok, ds, epochs=1, batch_size=batch_size)
    real = sum(sum(m) for m in ds["attention_mask"])
    return {"seconds": seconds, "rows": len(rows), "real_tokens_per_s": real / seconds,
            "padded_fraction": nb.padded_fraction(ds)}


def worker_ours_predict(model_dir: str, rows, pool, tmp: Path, batch_size: int, merge: bool = True, sort: bool = True,
                        precision: str = "fp32") -> dict:
    """lorabudget predict: a trained-state run directory, merged weights, length-sorted batches."""
    import torch
    from lorabudget.batching import tokenize
    from lorabudget.config import from_dict, save_config
    from lorabudget.modeling import build_model
    from lorabudget.runs import load_run

    cfg = from_dict({"name": "bench", "model": {"name": model_dir, "max_length": MAX_LENGTH},
                     "adapter": {"r": 8, "alpha": 16, "modules": ["query", "value"]},
                     "training": {"eval_batch_size": batch_size}, "budget": {"max_trainable_params": 10**9}})
    torch.manual_seed(0)  # the same head in every worker, so fp32 and bf16 predictions can be compared
    model = build_model(cfg).model
    run_dir = tmp / "run"
    model.save_pretrained(str(run_dir / "adapter"))
    save_config(cfg, run_dir / "config.yaml")
    run = load_run(run_dir, merge=merge, precision=precision)
    texts = [t for t, _ in rows]
    start = time.perf_counter()
    predictions = None
    if sort:
        predictions = run.logits(texts).argmax(1).tolist()
    else:  # ablation: input order, so each batch pads to its own longest row only
        tokens = tokenize(run.tokenizer, texts, MAX_LENGTH)
        from lorabudget.batching import PadCollator

        collate = PadCollator(tokens, run.pad_id)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                b = collate(list(range(i, min(i + batch_size, len(texts)))))
                run.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": len(rows), "predictions": predictions}


def worker_notebook_predict(model_dir: str, rows, pool, tmp: Path, batch_size: int) -> dict:
    import notebook_recipe as nb
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = notebook_rows(tok, rows, pool, labelled=False)
    model = nb.build_model(model_dir, 4)
    start = time.perf_counter()
    nb.predict_like_notebook(model, tok, ds, batch_size=batch_size)
    return {"seconds": time.perf_counter() - start, "rows": len(rows), "padded_fraction": nb.padded_fraction(ds)}


WORKERS = {
    "ours_train": worker_ours_train, "notebook_train": worker_notebook_train,
    "ours_predict": worker_ours_predict, "notebook_predict": worker_notebook_predict,
}


def run_worker(kind: str, model_dir: Path, data: Path, rows: int, offset: int, **kwargs) -> dict:
    spec = json.dumps({"kind": kind, "model_dir": str(model_dir), "data": str(data), "rows": rows, "offset": offset, "kwargs": kwargs})
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worker_main(spec: str) -> None:
    s = json.loads(spec)
    pool = read_texts(Path(s["data"]), s["offset"] + max(s["rows"], MAP_CHUNK))[s["offset"]:]
    rows = pool[: s["rows"]]
    with tempfile.TemporaryDirectory() as tmp:
        result = WORKERS[s["kind"]](s["model_dir"], rows, pool, Path(tmp), **s["kwargs"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------


def alternate(pairs, rounds: int = 2):
    """Run each (name, fn) pair in alternation for ``rounds`` rounds; sum seconds and rows per name."""
    totals: dict[str, dict] = {}
    for r in range(rounds):
        for name, fn in pairs:
            out = fn(r)
            t = totals.setdefault(name, {"seconds": 0.0, "rows": 0, "peak_rss_mb": 0.0, "runs": []})
            t["seconds"] += out["seconds"]
            t["rows"] += out["rows"]
            t["peak_rss_mb"] = max(t["peak_rss_mb"], out["peak_rss_mb"])
            t["runs"].append(out)
            print(f"  {name} round {r}: {out['rows']} rows in {out['seconds']:.1f}s", flush=True)
    for t in totals.values():
        t["samples_per_s"] = t["rows"] / t["seconds"]
    return totals


def update_section(path: Path, key: str, text: str) -> None:
    """Replace (or append) the block between <!-- key --> and <!-- /key --> in a Markdown file."""
    start, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    block = f"{start}\n{text}{end}\n"
    old = path.read_text() if path.exists() else "# Speed benchmarks\n\nWritten by `benchmarks/speed.py`, one block per mode.\n\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def main() -> int:
    ap = argparse.ArgumentParser(description="lorabudget vs notebook recipe: speed")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small model, plus scaling and lever tables")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run (no meaningful timings)")
    ap.add_argument("--data", type=Path, default=SHARED / "agnews" / "train_5k.csv")
    ap.add_argument("--tokenizer", type=Path, default=SHARED / "roberta-base-tokenizer")
    ap.add_argument("--out", type=Path, help="write the Markdown table here")
    args = ap.parse_args()
    if args.worker:
        worker_main(args.worker)
        return 0
    if not args.data.is_file() or not (args.tokenizer / "tokenizer.json").is_file():
        print(f"skipped: needs {args.data} and {args.tokenizer} (the shared AG News rows and roberta-base tokenizer)")
        return 0
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    size = SIZES[mode]
    tmp = Path(tempfile.mkdtemp())
    model_dir = make_model_dir(tmp / "model", mode, args.tokenizer)
    half_t, half_p = size["train_rows"] // 2, size["predict_rows"] // 2
    rounds = 1 if mode == "tiny" else 2
    print(f"mode {mode}: training {size['train_rows']} rows, predicting {size['predict_rows']} rows per side", flush=True)

    train = alternate([
        ("lorabudget", lambda r: run_worker("ours_train", model_dir, args.data, half_t, r * half_t, batch_size=16)),
        ("notebook", lambda r: run_worker("notebook_train", model_dir, args.data, half_t, r * half_t, batch_size=16)),
    ], rounds)
    predict = alternate([
        ("lorabudget", lambda r: run_worker("ours_predict", model_dir, args.data, half_p, 2000 + r * half_p, batch_size=64)),
        ("notebook", lambda r: run_worker("notebook_predict", model_dir, args.data, half_p, 2000 + r * half_p, batch_size=8)),
        ("lorabudget bf16", lambda r: run_worker("ours_predict", model_dir, args.data, half_p, 2000 + r * half_p,
                                                 batch_size=64, precision="bf16")),
    ], rounds)
    fp32_preds = [p for run in predict["lorabudget"]["runs"] for p in run["predictions"]]
    bf16_preds = [p for run in predict["lorabudget bf16"]["runs"] for p in run["predictions"]]
    agreement = sum(a == b for a, b in zip(fp32_preds, bf16_preds)) / len(fp32_preds)

    def pad(side, key="padded_fraction"):
        vals = [r[key] for r in side["runs"] if r.get(key) is not None]
        return f"{100 * sum(vals) / len(vals):.0f}%" if vals else "–"

    lines = [
        f"### {mode} mode: {'roberta-base shape (125M parameters, random weights)' if mode == 'full' else 'small RoBERTa (4 layers, hidden 256)' if mode == 'quick' else 'tiny smoke run'}",
        "",
        f"LoRA r=8, alpha=16 on query+value, the model's own head; real AG News rows; max length {MAX_LENGTH}; "
        f"{size['train_rows']} training rows and {size['predict_rows']} prediction rows per side, in 2 alternating rounds.",
        "",
        "| measurement | notebook recipe | lorabudget | ratio |",
        "|---|---:|---:|---:|",
        f"| training samples/s (batch 16, fp32) | {train['notebook']['samples_per_s']:.2f} | {train['lorabudget']['samples_per_s']:.2f} | "
        f"**{train['lorabudget']['samples_per_s'] / train['notebook']['samples_per_s']:.2f}x** |",
        f"| training real tokens/s | {sum(r['real_tokens_per_s'] for r in train['notebook']['runs']) / rounds:,.0f} | "
        f"{sum(r['real_tokens_per_s'] or 0 for r in train['lorabudget']['runs']) / rounds:,.0f} | |",
        f"| training padded share of token positions | {pad(train['notebook'])} | {pad(train['lorabudget'])} | |",
        f"| training peak RSS (MB) | {train['notebook']['peak_rss_mb']:,.0f} | {train['lorabudget']['peak_rss_mb']:,.0f} | |",
        f"| inference samples/s (notebook: batch 8, pre-padded, unmerged; lorabudget `predict`: length-sorted batches of up to 64 rows and 1,024 token positions, merged, fp32) | "
        f"{predict['notebook']['samples_per_s']:.2f} | {predict['lorabudget']['samples_per_s']:.2f} | "
        f"**{predict['lorabudget']['samples_per_s'] / predict['notebook']['samples_per_s']:.2f}x** |",
        f"| inference samples/s, lorabudget `--precision bf16` (same predictions as fp32 on {100 * agreement:.1f}% of rows) | "
        f"{predict['notebook']['samples_per_s']:.2f} | {predict['lorabudget bf16']['samples_per_s']:.2f} | "
        f"**{predict['lorabudget bf16']['samples_per_s'] / predict['notebook']['samples_per_s']:.2f}x** |",
        f"| inference peak RSS (MB) | {predict['notebook']['peak_rss_mb']:,.0f} | {predict['lorabudget']['peak_rss_mb']:,.0f} | |",
        "",
    ]

    if mode == "quick":
        lines += ["#### What each inference lever buys (lorabudget side, same rows)", "",
                  "| variant | samples/s |", "|---|---:|"]
        levers = [
            ("batch 8, input order, unmerged", dict(batch_size=8, merge=False, sort=False)),
            ("batch 64, input order, unmerged", dict(batch_size=64, merge=False, sort=False)),
            ("length-sorted, up to 64 rows / 1,024 positions per batch, unmerged", dict(batch_size=64, merge=False, sort=True)),
            ("the same, merged (lorabudget predict, fp32)", dict(batch_size=64, merge=True, sort=True)),
            ("the same, bf16 autocast (lorabudget predict --precision bf16)", dict(batch_size=64, merge=True, sort=True, precision="bf16")),
        ]
        for name, kw in levers:
            out = run_worker("ours_predict", model_dir, args.data, size["predict_rows"], 2000, **kw)
            lines.append(f"| {name} | {out['rows'] / out['seconds']:.1f} |")
            print(f"  lever {name}: {out['rows'] / out['seconds']:.1f}/s", flush=True)
        out = run_worker("ours_train", model_dir, args.data, size["train_rows"], 0, batch_size=16, length_grouping=False)
        lines += ["", f"Training without length grouping (shuffled batches, each padded to its own longest row): "
                  f"{out['rows'] / out['seconds']:.2f} samples/s vs {train['lorabudget']['samples_per_s']:.2f} with grouping.", ""]
        lines += ["#### Scaling of cost with work (lorabudget)", "", "| work | rows | seconds | seconds per 1k rows |", "|---|---:|---:|---:|"]
        for n in (1000, 2000, 4000):
            out = run_worker("ours_train", model_dir, args.data, n, 0, batch_size=16)
            lines.append(f"| training | {n:,} | {out['seconds']:.1f} | {1000 * out['seconds'] / n:.1f} |")
            print(f"  scaling train {n}: {out['seconds']:.1f}s", flush=True)
        for n in (1000, 4000, 8000):
            out = run_worker("ours_predict", model_dir, args.data, n, 0, batch_size=64)
            lines.append(f"| prediction | {n:,} | {out['seconds']:.1f} | {1000 * out['seconds'] / n:.1f} |")
            print(f"  scaling predict {n}: {out['seconds']:.1f}s", flush=True)
        lines.append("")
    lines.append(f"Machine: {machine()}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        update_section(args.out, f"speed:{mode}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
