"""Cost of distillation: one student epoch with cached teacher logits vs one plain LoRA epoch, and vs
a teacher forward pass inside every training step (the starting point's way), same model and data.

Student: the `minilm-cpu` preset (real MiniLM-L6). Teacher: the `minilm-cpu-teacher` preset's
architecture (r=64 on every module; its weights do not change the cost). The three variants run in
alternation, twice each, in one process. The teacher's one-off inference pass is reported apart.

Usage: python benchmarks/distill_cost.py [--rows 640] [--data PATH] [--out docs/distill.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_5K, emit, machine, read_rows, write_rows  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=640)
    ap.add_argument("--data", type=Path, default=TRAIN_5K)
    ap.add_argument("--student", default="minilm-cpu")
    ap.add_argument("--teacher", default="minilm-cpu-teacher")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} not found")
        return 0

    from lorabudget.config import load_config, save_config
    from lorabudget.inference.runs import load_run
    from lorabudget.model.build import build_model
    from lorabudget.training.distill import TeacherLogitsCache, kd_loss, teacher_logits
    from lorabudget.training.loop import train
    from lorabudget.training.setup import prepare_data

    tmp = Path(tempfile.mkdtemp())
    write_rows(tmp / "train.csv", read_rows(args.data)[: args.rows + 64])
    data_overrides = [
        f"data.train={tmp / 'train.csv'}",
        "data.validation_size=64",
        f"data.cache_dir={tmp / 'cache'}",
        "training.epochs=1",
        "training.log_every=1000",
    ]
    student = load_config(args.student, data_overrides)
    teacher_cfg = load_config(args.teacher, data_overrides)
    teacher_dir = tmp / "teacher"
    torch.manual_seed(0)
    build_model(teacher_cfg).model.save_pretrained(str(teacher_dir / "adapter"))
    save_config(teacher_cfg, teacher_dir / "config.yaml")

    data = prepare_data(student, log=lambda *_: None)
    quiet = lambda *_: None  # noqa: E731
    start = time.perf_counter()
    table = torch.from_numpy(teacher_logits(teacher_dir, data.train.texts, TeacherLogitsCache(tmp / "cache"), quiet))
    teacher_pass_s = time.perf_counter() - start
    teacher = load_run(teacher_dir, merge=False).model  # the starting point ran the unmerged PEFT teacher
    T, lam = student.distill.temperature, student.distill.alpha

    def cached_loss(logits, batch):
        return kd_loss(logits, table[batch["index"].cpu()].to(logits.device), batch["labels"], T, lam)

    def live_loss(logits, batch):
        with torch.no_grad():
            t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return kd_loss(logits, t_logits, batch["labels"], T, lam)

    variants = [
        ("plain LoRA epoch", None),
        ("distillation, cached teacher logits", cached_loss),
        ("distillation, teacher forward in every step", live_loss),
    ]
    times = {name: [] for name, _ in variants}
    for round_ in range(2):
        for name, loss in variants:
            kwargs = {"loss_fn": loss} if loss else {}
            summary = train(student, tmp / f"run-{round_}-{len(times[name])}", data=data, log=quiet, **kwargs)
            times[name].append(summary["train_time_s"])
            print(f"  {name}: {summary['train_time_s']:.1f}s", flush=True)
    plain = np.mean(times["plain LoRA epoch"])
    lines = [
        f"Student `{args.student}` ({len(data.train)} training rows, 1 epoch), teacher `{args.teacher}` architecture; "
        "mean of 2 alternating runs each, one process.",
        "",
        "| variant | epoch time (s) | vs plain epoch |",
        "|---|---:|---:|",
    ]
    for name, _ in variants:
        lines.append(f"| {name} | {np.mean(times[name]):.1f} | {np.mean(times[name]) / plain:.2f}x |")
    lines += [
        "",
        f"One-off teacher inference pass over the {len(data.train)} training texts (then cached): {teacher_pass_s:.1f} s.",
        "",
    ]
    lines.append(f"Machine: {machine()}.")
    emit("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
