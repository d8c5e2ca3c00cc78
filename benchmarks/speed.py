"""Speed: lorabudget's training loop and `predict` vs the notebook recipe, side by side.

Same machine, same model, same LoRA placement (r=8, alpha=16, query+value, the model's own head), same
real AG News rows, same maximum length (512, the notebook's truncation). Each measurement runs in
its own subprocess (so peak memory is per side) and the sides alternate, A B A B, so drift hits both.

* full mode: the exact roberta-base shape (random weights) with the real tokenizer from
  ../shared/data/roberta-base-tokenizer/.
* --quick: a 4-layer, hidden-256 RoBERTa with the same tokenizer, one round, about a minute.
* --levers (with any mode): what each lever buys, one run each: inference (batching, merging, bf16,
  torch.compile, threads) and training (bf16, AdamW kernels, torch.compile, threads, the position
  cap, allocators), plus the scaling table (cost for 1k/2k/4k training rows, 1k/4k/8k predictions).
* --tiny: a seconds-long smoke run (used by the test suite to prove the script works, not to time it).

Roofline: next to samples/s, each side's achieved GFLOP/s, counted by lorabudget.model.flops from the
model's shape and the batches it really ran (executed = padded positions; "real" = real tokens
only), and the fraction of this machine's matmul peak in the same precision, measured in the same
run (a 2048x2048 matmul loop on a CPU, 8192x8192 on a GPU, fp32 and bf16, best of the start and
the end of the run; no bf16 peak on a CPU that only emulates bf16, where one such matmul takes a
minute and the bf16 sides have no fraction). Training FLOPs are forward + the backward autograd really computes (LoRA on a
frozen base: input gradients only, no weight gradients for frozen weights; see lorabudget/flops.py).

Usage: python benchmarks/speed.py [--quick|--tiny] [--levers] [--out docs/benchmarks.md]
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
from common import ShapeRecorder, machine, matmul_peaks  # noqa: E402

SIZES = {
    "full": dict(train_rows=192, predict_rows=384, rounds=2),
    "quick": dict(train_rows=256, predict_rows=512, rounds=1),
    "tiny": dict(train_rows=32, predict_rows=64, rounds=1),
}
ALLOCATORS = {  # opt-in allocators measured by --levers when installed (Debian: libjemalloc2, libtcmalloc-minimal4)
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}
MAX_LENGTH = 512
MAP_CHUNK = 1000  # datasets.map's default batch size: the notebook pads each row to its chunk's longest


def make_model_dir(out: Path, mode: str, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, RobertaModel

    config = AutoConfig.from_pretrained(tokenizer_dir)
    if mode != "full":
        layers, hidden = (4, 256) if mode == "quick" else (1, 64)
        config.update(
            dict(
                num_hidden_layers=layers,
                hidden_size=hidden,
                intermediate_size=4 * hidden,
                num_attention_heads=4,
                max_position_embeddings=MAX_LENGTH + 2,  # RoBERTa: positions start after the padding id
            )
        )
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


def worker_ours_train(
    model_dir: str, rows, pool, tmp: Path, batch_size: int, length_grouping: bool = True, training: dict | None = None
) -> dict:
    from lorabudget.config import from_dict
    from lorabudget.training.loop import train

    with open(tmp / "train.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows + rows[:16])  # 16 extra rows are the validation split
    cfg = from_dict(
        {
            "name": "bench",
            "model": {"name": model_dir, "max_length": MAX_LENGTH},
            "adapter": {"r": 8, "alpha": 16, "dropout": 0.1, "modules": ["query", "value"]},
            "data": {
                "train": str(tmp / "train.csv"),
                "validation_size": 16,
                "split_seed": 0,
                "cache_dir": str(tmp / "cache"),
            },
            "training": {
                "epochs": 1,
                "batch_size": batch_size,
                "log_every": 1000,
                "eval_batch_size": 64,
                "length_grouping": length_grouping,
                **(training or {}),
            },
            "budget": {"max_trainable_params": 10**9},
        }
    )
    summary = train(cfg, tmp / "run", log=lambda *_: None)
    lines = [json.loads(l) for l in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    train_line = [l for l in lines if l["type"] == "train"][-1]
    compute_s = summary["train_time_s"] - summary["eval_time_s"]
    return {
        "seconds": summary["train_time_s"],
        "rows": summary["train_rows"],
        "real_tokens_per_s": summary["tokens_per_s"],
        "padded_fraction": summary.get("padded_fraction"),
        "loss": train_line["loss"],
        "precision": {"no": "fp32"}.get(summary["mixed_precision"], summary["mixed_precision"]),
        "compute_s": compute_s,
        "flops": summary.get("train_flops"),
        "real_flops": (summary.get("train_real_token_flops_per_s") or 0) * compute_s,
    }


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

    from lorabudget.model.flops import encoder_shape, training_coefficients

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = notebook_rows(tok, rows, pool, labelled=True)
    model = nb.build_model(model_dir, 4)
    recorder = ShapeRecorder(model)
    seconds, _ = nb.train_like_notebook(model, tok, ds, epochs=1, batch_size=batch_size)
    real = sum(sum(m) for m in ds["attention_mask"])
    flops, real_flops = recorder.flops(training_coefficients(encoder_shape(model)))
    return {
        "seconds": seconds,
        "rows": len(rows),
        "real_tokens_per_s": real / seconds,
        "padded_fraction": nb.padded_fraction(ds),
        "precision": "fp32",
        "compute_s": seconds,
        "flops": flops,
        "real_flops": real_flops,
    }


def worker_ours_predict(
    model_dir: str,
    rows,
    pool,
    tmp: Path,
    batch_size: int,
    merge: bool = True,
    sort: bool = True,
    precision: str = "fp32",
    compile: bool = False,
    threads: int | None = None,
) -> dict:
    """lorabudget predict: a trained-state run directory, merged weights, length-sorted batches."""
    import torch

    from lorabudget.config import from_dict, save_config
    from lorabudget.data.batching import tokenize
    from lorabudget.inference.runs import load_run
    from lorabudget.model.build import build_model

    cfg = from_dict(
        {
            "name": "bench",
            "model": {"name": model_dir, "max_length": MAX_LENGTH},
            "adapter": {"r": 8, "alpha": 16, "modules": ["query", "value"]},
            "training": {"eval_batch_size": batch_size},
            "budget": {"max_trainable_params": 10**9},
        }
    )
    torch.manual_seed(0)  # the same head in every worker, so fp32 and bf16 predictions can be compared
    model = build_model(cfg).model
    run_dir = tmp / "run"
    model.save_pretrained(str(run_dir / "adapter"))
    save_config(cfg, run_dir / "config.yaml")
    from lorabudget.model.flops import encoder_shape, forward_coefficients

    run = load_run(run_dir, merge=merge, precision=precision, threads=threads)
    coefficients = forward_coefficients(encoder_shape(run.model))
    recorder = ShapeRecorder(run.model)
    texts = [t for t, _ in rows]
    if compile:  # compiled once on the rows' shapes before the clock starts (compilation is not inference)
        run.model = torch.compile(run.model, dynamic=None)
        run.logits(texts)
        recorder = ShapeRecorder(run.model)
    start = time.perf_counter()
    predictions = None
    if sort:
        predictions = run.logits(texts).argmax(1).tolist()
    else:  # ablation: input order, so each batch pads to its own longest row only
        tokens = tokenize(run.tokenizer, texts, MAX_LENGTH)
        from lorabudget.data.batching import PadCollator

        collate = PadCollator(tokens, run.pad_id)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                b = collate(list(range(i, min(i + batch_size, len(texts)))))
                run.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    seconds = time.perf_counter() - start
    flops, real_flops = recorder.flops(coefficients)
    return {
        "seconds": seconds,
        "rows": len(rows),
        "predictions": predictions,
        "precision": run.precision,
        "compute_s": seconds,
        "flops": flops,
        "real_flops": real_flops,
    }


def worker_notebook_predict(model_dir: str, rows, pool, tmp: Path, batch_size: int) -> dict:
    import notebook_recipe as nb
    from transformers import AutoTokenizer

    from lorabudget.model.flops import encoder_shape, forward_coefficients

    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = notebook_rows(tok, rows, pool, labelled=False)
    model = nb.build_model(model_dir, 4)
    recorder = ShapeRecorder(model)
    start = time.perf_counter()
    nb.predict_like_notebook(model, tok, ds, batch_size=batch_size)
    seconds = time.perf_counter() - start
    flops, real_flops = recorder.flops(forward_coefficients(encoder_shape(model)))
    return {
        "seconds": seconds,
        "rows": len(rows),
        "padded_fraction": nb.padded_fraction(ds),
        "precision": "fp32",
        "compute_s": seconds,
        "flops": flops,
        "real_flops": real_flops,
    }


WORKERS = {
    "ours_train": worker_ours_train,
    "notebook_train": worker_notebook_train,
    "ours_predict": worker_ours_predict,
    "notebook_predict": worker_notebook_predict,
}


def run_worker(
    kind: str, model_dir: Path, data: Path, rows: int, offset: int, env: dict | None = None, **kwargs
) -> dict:
    spec = json.dumps(
        {"kind": kind, "model_dir": str(model_dir), "data": str(data), "rows": rows, "offset": offset, "kwargs": kwargs}
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    res = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def worker_main(spec: str) -> None:
    s = json.loads(spec)
    pool = read_texts(Path(s["data"]), s["offset"] + max(s["rows"], MAP_CHUNK))[s["offset"] :]
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
            t = totals.setdefault(
                name,
                {
                    "seconds": 0.0,
                    "rows": 0,
                    "peak_rss_mb": 0.0,
                    "runs": [],
                    "compute_s": 0.0,
                    "flops": 0.0,
                    "real_flops": 0.0,
                },
            )
            t["seconds"] += out["seconds"]
            t["rows"] += out["rows"]
            for key in ("compute_s", "flops", "real_flops"):
                t[key] += out.get(key) or 0.0
            t["precision"] = out.get("precision", "fp32")
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
    old = (
        path.read_text()
        if path.exists()
        else "# Speed benchmarks\n\nWritten by `benchmarks/speed.py`, one block per mode.\n\n"
    )
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = old + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def roofline(side: dict, peaks: dict) -> tuple[str, str]:
    """(achieved GFLOP/s "executed (real)", fraction of the same-precision matmul peak) of one side."""
    if not side.get("compute_s") or not side.get("flops"):
        return "–", "–"
    rate, real = side["flops"] / side["compute_s"], side["real_flops"] / side["compute_s"]
    peak = peaks.get(side.get("precision", "fp32"))
    return f"{rate / 1e9:,.1f} ({real / 1e9:,.1f})", (
        f"{100 * rate / peak:.0f}% of {side.get('precision', 'fp32')}" if peak else "–"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description="lorabudget vs notebook recipe: speed")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="small model, one round: about a minute")
    ap.add_argument("--tiny", action="store_true", help="seconds-long smoke run (no meaningful timings)")
    ap.add_argument("--levers", action="store_true", help="also measure each lever, and the scaling table")
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
    rounds = size["rounds"]
    half_t, half_p = size["train_rows"] // rounds, size["predict_rows"] // rounds
    peak_seconds = 0.1 if mode == "tiny" else 1.0
    peaks = matmul_peaks(peak_seconds)
    from lorabudget.envinfo import cpu_summary

    cpu = cpu_summary()  # figures differ by CPU kind (bf16 above all): every figure names its CPU
    print(
        f"mode {mode}: training {size['train_rows']} rows, predicting {size['predict_rows']} rows per side; "
        f"matmul peak " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items()) + f"; CPU {cpu}",
        flush=True,
    )

    train = alternate(
        [
            # fp32 explicitly: `auto` may pick bf16 (measured per CPU), and the notebook recipe trains in fp32.
            (
                "lorabudget",
                lambda r: run_worker(
                    "ours_train",
                    model_dir,
                    args.data,
                    half_t,
                    r * half_t,
                    batch_size=16,
                    training={"mixed_precision": "no"},
                ),
            ),
            (
                "notebook",
                lambda r: run_worker("notebook_train", model_dir, args.data, half_t, r * half_t, batch_size=16),
            ),
            (
                "lorabudget bf16",
                lambda r: run_worker(
                    "ours_train",
                    model_dir,
                    args.data,
                    half_t,
                    r * half_t,
                    batch_size=16,
                    training={"mixed_precision": "bf16"},
                ),
            ),
        ],
        rounds,
    )
    predict = alternate(
        [
            (
                "lorabudget",
                lambda r: run_worker("ours_predict", model_dir, args.data, half_p, 2000 + r * half_p, batch_size=64),
            ),
            (
                "notebook",
                lambda r: run_worker("notebook_predict", model_dir, args.data, half_p, 2000 + r * half_p, batch_size=8),
            ),
            (
                "lorabudget bf16",
                lambda r: run_worker(
                    "ours_predict", model_dir, args.data, half_p, 2000 + r * half_p, batch_size=64, precision="bf16"
                ),
            ),
        ],
        rounds,
    )
    # The peak again at the end: the better of the two stands for the machine (load can only lower it).
    for key, value in matmul_peaks(peak_seconds).items():
        peaks[key] = max(peaks.get(key, 0.0), value)
    fp32_preds = [p for run in predict["lorabudget"]["runs"] for p in run["predictions"]]
    bf16_preds = [p for run in predict["lorabudget bf16"]["runs"] for p in run["predictions"]]
    agreement = sum(a == b for a, b in zip(fp32_preds, bf16_preds)) / len(fp32_preds)

    def pad(side, key="padded_fraction"):
        vals = [r[key] for r in side["runs"] if r.get(key) is not None]
        return f"{100 * sum(vals) / len(vals):.0f}%" if vals else "–"

    def ratio(a, b):
        return f"**{a['samples_per_s'] / b['samples_per_s']:.2f}x**"

    nb_t, ours_t, bf_t = train["notebook"], train["lorabudget"], train["lorabudget bf16"]
    nb_p, ours_p, bf_p = predict["notebook"], predict["lorabudget"], predict["lorabudget bf16"]
    lines = [
        f"### {mode} mode: {'roberta-base shape (125M parameters, random weights)' if mode == 'full' else 'small RoBERTa (4 layers, hidden 256)' if mode == 'quick' else 'tiny smoke run'}",
        "",
        f"LoRA r=8, alpha=16 on query+value, the model's own head; real AG News rows; max length {MAX_LENGTH}; "
        f"{size['train_rows']} training rows and {size['predict_rows']} prediction rows per side, in {rounds} alternating round(s).",
        "Matmul peak of this machine, measured in this run: "
        + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items())
        + ".",
        f"CPU: {cpu}.",
        "",
        "| measurement | notebook recipe | lorabudget | ratio |",
        "|---|---:|---:|---:|",
        f"| training samples/s (batch 16; notebook fp32, lorabudget {ours_t['precision']}, `training.mixed_precision: no`) | {nb_t['samples_per_s']:.2f} | "
        f"{ours_t['samples_per_s']:.2f} | {ratio(ours_t, nb_t)} |",
        f"| training samples/s, lorabudget `training.mixed_precision: bf16` | {nb_t['samples_per_s']:.2f} | "
        f"{bf_t['samples_per_s']:.2f} | {ratio(bf_t, nb_t)} |",
        f"| training real tokens/s | {sum(r['real_tokens_per_s'] for r in nb_t['runs']) / rounds:,.0f} | "
        f"{sum(r['real_tokens_per_s'] or 0 for r in ours_t['runs']) / rounds:,.0f} | |",
        f"| training padded share of token positions | {pad(nb_t)} | {pad(ours_t)} | |",
        f"| training GFLOP/s executed (on real tokens only) | {roofline(nb_t, peaks)[0]} | {roofline(ours_t, peaks)[0]} | |",
        f"| training fraction of the same-precision matmul peak | {roofline(nb_t, peaks)[1]} | {roofline(ours_t, peaks)[1]} | |",
        f"| training GFLOP/s and fraction of peak, lorabudget bf16 | | {roofline(bf_t, peaks)[0]}, {roofline(bf_t, peaks)[1]} | |",
        f"| training peak RSS (MB) | {nb_t['peak_rss_mb']:,.0f} | {ours_t['peak_rss_mb']:,.0f} (bf16 {bf_t['peak_rss_mb']:,.0f}) | |",
        f"| inference samples/s (notebook: batch 8, pre-padded, unmerged; lorabudget `predict`: length-sorted batches of up to 64 rows and 1,024 token positions, bucketed widths, merged, fp32) | "
        f"{nb_p['samples_per_s']:.2f} | {ours_p['samples_per_s']:.2f} | {ratio(ours_p, nb_p)} |",
        f"| inference samples/s, lorabudget `--precision bf16` (same predictions as fp32 on {100 * agreement:.1f}% of rows) | "
        f"{nb_p['samples_per_s']:.2f} | {bf_p['samples_per_s']:.2f} | {ratio(bf_p, nb_p)} |",
        f"| inference GFLOP/s executed (on real tokens only) | {roofline(nb_p, peaks)[0]} | {roofline(ours_p, peaks)[0]} | |",
        f"| inference fraction of the same-precision matmul peak | {roofline(nb_p, peaks)[1]} | {roofline(ours_p, peaks)[1]} | |",
        f"| inference GFLOP/s and fraction of peak, lorabudget bf16 | | {roofline(bf_p, peaks)[0]}, {roofline(bf_p, peaks)[1]} | |",
        f"| inference peak RSS (MB) | {nb_p['peak_rss_mb']:,.0f} | {ours_p['peak_rss_mb']:,.0f} | |",
        "",
    ]

    if args.levers:
        lines += levers(model_dir, args.data, size, train["lorabudget"], peaks, mode)
    lines.append(f"Machine: {machine()}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        update_section(args.out, f"speed:{mode}" + (":levers" if args.levers else ""), text)
    return 0


def levers(model_dir: Path, data: Path, size: dict, baseline: dict, peaks: dict, mode: str) -> list[str]:
    """One run per lever (no alternation: indicative; rerun the ones that matter)."""
    n_train, n_predict = size["train_rows"], size["predict_rows"]
    lines = [
        "#### What each inference lever buys (lorabudget side, same rows)",
        "",
        "| variant | samples/s | GFLOP/s executed (real) | fraction of peak | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    inference = [
        ("batch 8, input order, unmerged", dict(batch_size=8, merge=False, sort=False)),
        ("batch 64, input order, unmerged", dict(batch_size=64, merge=False, sort=False)),
        (
            "length-sorted, up to 64 rows / 1,024 positions per batch, bucketed widths, unmerged",
            dict(batch_size=64, merge=False, sort=True),
        ),
        ("the same, merged (lorabudget predict, fp32)", dict(batch_size=64, merge=True, sort=True)),
        ("the same, 1 thread", dict(batch_size=64, merge=True, sort=True, threads=1)),
        (
            "the same, bf16 autocast (lorabudget predict --precision bf16)",
            dict(batch_size=64, merge=True, sort=True, precision="bf16"),
        ),
        (
            "the same, fp32, torch.compile (compiled before the clock)",
            dict(batch_size=64, merge=True, sort=True, compile=True),
        ),
        (
            "the same, bf16, torch.compile (compiled before the clock)",
            dict(batch_size=64, merge=True, sort=True, precision="bf16", compile=True),
        ),
    ]
    for name, kw in inference:
        try:
            out = run_worker("ours_predict", model_dir, data, n_predict, 2000, **kw)
        except RuntimeError as err:  # e.g. torch.compile without a C++ compiler: say so, keep going
            lines.append(f"| {name} | failed: {str(err).strip().splitlines()[-1][:120]} | | | |")
            continue
        side = dict(out, samples_per_s=out["rows"] / out["seconds"])
        g, f = roofline(side, peaks)
        lines.append(f"| {name} | {side['samples_per_s']:.1f} | {g} | {f} | {out['peak_rss_mb']:,.0f} |")
        print(f"  lever {name}: {side['samples_per_s']:.1f}/s", flush=True)
    lines += [
        "",
        "#### What each training lever buys (lorabudget side, same rows, batch 16)",
        "",
        "| variant | samples/s | GFLOP/s executed (real) | fraction of peak | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    training = [
        ("defaults (fp32 on a CPU, bucketed widths, position cap)", {}, {}),
        ("bf16 autocast (`training.mixed_precision: bf16`)", {"mixed_precision": "bf16"}, {}),
        ("`training.adamw_impl: foreach`", {"adamw_impl": "foreach"}, {}),
        ("`training.adamw_impl: fused`", {"adamw_impl": "fused"}, {}),
        ("`training.threads: 1`", {"threads": 1}, {}),
        ("no position cap (`training.max_batch_positions: 0`)", {"max_batch_positions": 0}, {}),
        ("`training.compile: true` (compile time included)", {"compile": True}, {}),
        (
            "glibc malloc without its dynamic mmap threshold (`MALLOC_TRIM_THRESHOLD_=0`)",
            {},
            {"MALLOC_TRIM_THRESHOLD_": "0"},
        ),
    ] + [
        (f"{name} (`LD_PRELOAD={path}`)", {}, {"LD_PRELOAD": path})
        for name, path in ALLOCATORS.items()
        if Path(path).is_file()
    ]
    for name, overrides, env in training:
        try:
            out = run_worker("ours_train", model_dir, data, n_train, 0, env=env, batch_size=16, training=overrides)
        except RuntimeError as err:
            lines.append(f"| {name} | failed: {str(err).strip().splitlines()[-1][:120]} | | | |")
            continue
        side = dict(out, samples_per_s=out["rows"] / out["seconds"])
        g, f = roofline(side, peaks)
        lines.append(f"| {name} | {side['samples_per_s']:.2f} | {g} | {f} | {out['peak_rss_mb']:,.0f} |")
        print(f"  lever {name}: {side['samples_per_s']:.2f}/s", flush=True)
    out = run_worker("ours_train", model_dir, data, n_train, 0, batch_size=16, length_grouping=False)
    lines += [
        "",
        f"Training without length grouping (shuffled batches, each padded to its own bucket): "
        f"{out['rows'] / out['seconds']:.2f} samples/s vs {baseline['samples_per_s']:.2f} with grouping.",
        "",
    ]
    if mode == "tiny":
        return lines
    lines += [
        "#### Scaling of cost with work (lorabudget)",
        "",
        "| work | rows | seconds | seconds per 1k rows |",
        "|---|---:|---:|---:|",
    ]
    for n in (1000, 2000, 4000):
        out = run_worker("ours_train", model_dir, data, n, 0, batch_size=16)
        lines.append(f"| training | {n:,} | {out['seconds']:.1f} | {1000 * out['seconds'] / n:.1f} |")
        print(f"  scaling train {n}: {out['seconds']:.1f}s", flush=True)
    for n in (1000, 4000, 8000):
        out = run_worker("ours_predict", model_dir, data, n, 0, batch_size=64)
        lines.append(f"| prediction | {n:,} | {out['seconds']:.1f} | {1000 * out['seconds'] / n:.1f} |")
        print(f"  scaling predict {n}: {out['seconds']:.1f}s", flush=True)
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())
