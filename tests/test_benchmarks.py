"""Benchmarks run end to end in their tiny modes (this proves they work; they time nothing)."""

import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> None:
    """``benchmarks/SCRIPT ARGS`` in a fresh interpreter; it must exit 0."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_speed_benchmark_tiny_mode(tmp_path, tiny_roberta, data_dir):
    out = tmp_path / "bench.md"
    run_benchmark(
        "speed.py", "--tiny", "--data", str(data_dir / "train.csv"), "--tokenizer", str(tiny_roberta), "--out", str(out)
    )
    text = out.read_text()
    assert "training samples/s" in text and "inference samples/s" in text and "Machine:" in text
    assert "\nCPU: " in text and "flags: " in text  # every block names its CPU kind and the flags that matter
    assert "<!-- speed:tiny -->" in text and text.count("x** |") == 4
    assert "training GFLOP/s executed" in text and "% of fp32" in text and "Matmul peak of this machine" in text


def test_heads_seeded_split_draws_a_headerless_first_row_like_the_others(tmp_path):
    """AG News' rows have no header: the first row was taken for one and copied into both files."""
    split_seeded = runpy.run_path(str(ROOT / "benchmarks" / "heads.py"))["split_seeded"]
    rows = [f"text {i},{i % 4}" for i in range(40)]
    (tmp_path / "plain.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "named.csv").write_text(
        "text,label\n" + "\n".join(f"text {i},intent_{i % 4}" for i in range(40)) + "\n"
    )
    for name, header in (("plain", []), ("named", ["text,label"])):
        train, test = (
            p.read_text().splitlines() for p in split_seeded(tmp_path / f"{name}.csv", tmp_path / name, 10, 7)
        )
        assert train[: len(header)] == header and test[: len(header)] == header
        train, test = train[len(header) :], test[len(header) :]
        assert len(test) == 10 and len(train) == 30 and not set(train) & set(test)


def test_heads_benchmark_smoke_mode(tmp_path):
    """benchmarks/heads.py end to end on a tiny random BERT (two steps per run; measures nothing)."""
    out = tmp_path / "heads.md"
    run_benchmark(
        "heads.py",
        "--smoke",
        "--presets",
        "minilm-cpu-10k",
        "--heads",
        "auto,prototype",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
    )
    text = out.read_text()
    assert "<!-- heads:smoke -->" in text and "Machine:" in text and "McNemar p" in text
    assert "| minilm-cpu-10k | prototype: prototype | 197 (5) |" in text
