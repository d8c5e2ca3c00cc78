"""The multi-label benchmark script runs end to end in its smoke mode (this proves it works; it measures nothing)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_multilabel_benchmark_smoke_mode(tmp_path, tiny_bert, multilabel_dir):
    out = tmp_path / "bench.md"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "multilabel.py"), "--smoke", "--model", str(tiny_bert),
         "--data", str(multilabel_dir / "train.csv"), "--held-out", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert "Smoke run" in text and "Machine:" in text and "Held-out rows: 60" in text
    for side in ("all-majority", "TF-IDF + one-vs-rest logistic regression", "lorabudget `minilm-cpu` --multi-label"):
        assert side in text
    assert text.count("(95% CI)") == 2 and "held-out micro F1" in text
