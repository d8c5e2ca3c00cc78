"""`compare`: readable names, the trusted figure, intervals, paired tests, the plot a person can read."""

import csv
import json

import numpy as np
import pytest
import yaml

import lorabudget.report.compare as report
from lorabudget.cli import main
from lorabudget.report.compare import display_names, write_comparison
from lorabudget.stats import rows_fingerprint, wilson_interval


@pytest.fixture
def figures(monkeypatch):
    """The figures compare draws, kept open for inspection (saved as usual)."""
    drawn = []
    save = report.save_figure

    def keep(fig, path):
        drawn.append(fig)  # a closed figure keeps its artists
        save(fig, path)

    monkeypatch.setattr(report, "save_figure", keep)
    return drawn


def _axes_facts(fig):
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    front = [l for l in ax.get_lines() if l.get_gid() == "pareto-front"]  # one per budget
    names = [t.get_text() for t in ax.texts if not t.get_text().startswith("budget ")]
    return ax, legend, front, names


def _fake_run(
    path, name, params, val_acc, correct=None, data="test.csv", labels=None, budget=1_000_000, new_fields=True
):
    path.mkdir(parents=True)
    summary = {
        "name": name,
        "trainable_params": params,
        "head_params": 1540,
        "budget": budget,
        "validation_accuracy": val_acc,
        "validation_rows": 300,
        "train_time_s": 100.0,
    }
    summary.update(
        {"method": "lora", "adapter_params": params - 1540} if new_fields else {"lora_params": params - 1540}
    )
    (path / "summary.json").write_text(json.dumps(summary))
    if correct is not None:
        correct = np.asarray(correct, dtype=bool)
        labels = np.zeros(len(correct), dtype=int) if labels is None else labels
        record = {
            "kind": "evaluate",
            "data": data,
            "accuracy": float(correct.mean()),
            "rows": len(correct),
            "n": len(correct),
            "accuracy_ci95": list(wilson_interval(int(correct.sum()), len(correct))),
            "correct": correct.tolist(),
            "rows_fingerprint": rows_fingerprint(labels, [str(i) for i in range(len(correct))]),
            "time": "2026-01-01T00:00:00",
        }
        (path / "evals").mkdir()
        (path / "evals" / f"{data}.json").write_text(json.dumps(record))
    return path


def _nested(n, counts, seed=0):
    """Per-row correctness of several runs on the same n rows: each run right on the first k rows of one order."""
    order = np.random.default_rng(seed).permutation(n)
    out = []
    for k in counts:
        c = np.zeros(n, dtype=bool)
        c[order[:k]] = True
        out.append(c)
    return out


def test_issue_three_runs_validation_tie_test_front(tmp_path, figures):
    # The issue's case: one config name, validation ties at 90.33%, test 88.83% -> 90.03% -> 90.49% on 7,600 rows.
    c1, c2, c3 = _nested(7600, [6751, 6842, 6877])
    runs = [
        _fake_run(tmp_path / "runs" / "minilm-cpu", "minilm-cpu", 665_092, 0.9033, c3),
        _fake_run(tmp_path / "runs" / "minilm-r2", "minilm-cpu", 84_484, 0.8967, c2),
        _fake_run(tmp_path / "runs" / "minilm-r1q", "minilm-cpu", 6_148, 0.9033, c1, new_fields=False),
    ]
    path = write_comparison(runs, tmp_path / "cmp")
    text = path.read_text()
    assert "Ranked by **test accuracy on test.csv (7,600 rows)**" in text
    rows = [l for l in text.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert [r.split("|")[2].strip() for r in rows] == ["minilm-cpu", "minilm-r2", "minilm-r1q"]
    assert "90.49% (" in rows[0] and "88.83% (" in rows[2]
    # 6,877 vs 6,842 nested: 35 discordant rows all one way -> significant; 6,842 vs 6,751: 91 rows
    assert "| beats minilm-r2 (p<0.001) |" in rows[0] and "| beats minilm-r1q (p<0.001) |" in rows[1]
    assert "**minilm-cpu beats minilm-r2** (p<0.001" in text and "**minilm-r2 beats minilm-r1q**" in text
    with open(tmp_path / "cmp" / "compare.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == ["minilm-cpu", "minilm-r2", "minilm-r1q"]
    assert table[2]["adapter_params"] == str(6_148 - 1540)  # read from an old run's lora_params
    assert float(table[0]["test_accuracy"]) == pytest.approx(6877 / 7600) and table[0]["ranked_by"].startswith("test")

    ax, legend, front, names = _axes_facts(figures[-1])
    assert ax.get_xscale() == "log"
    assert sorted(names) == ["minilm-cpu", "minilm-r1q", "minilm-r2"]
    assert len(front) == 1
    fx, fy = front[0].get_data()
    assert list(fx) == [6_148, 84_484, 665_092]
    assert list(np.round(fy, 2)) == [88.83, 90.03, 90.49]  # through the test points, not the validation ties
    assert "test accuracy" in ax.get_title().lower()
    notes = [t.get_text() for t in ax.texts if t.get_text().startswith("budget")]
    assert legend.count("budget line") == 1 and notes == ["budget 1M"]  # the budget named once, by its line
    assert any(line.get_label().startswith("budget") for line in ax.get_lines())
    for label in legend:  # every legend entry names something drawn
        assert any(a.get_label() == label for a in [*ax.get_children(), *ax.containers])


def test_runs_under_different_budgets_each_count_within_their_own(tmp_path, figures):
    # A 10k, a 100k and a 1M preset: one front each (never one line across budgets), a run over its own budget off it.
    c1, c2, c3, c4 = _nested(1000, [820, 850, 880, 900])
    runs = [
        _fake_run(tmp_path / "p10k", "p10k", 6_148, 0.9, c1, data="t.csv", budget=10_000),
        _fake_run(tmp_path / "p100k", "p100k", 84_484, 0.9, c2, data="t.csv", budget=100_000),
        _fake_run(tmp_path / "p1m", "p1m", 665_092, 0.9, c3, data="t.csv", budget=1_000_000),
        _fake_run(tmp_path / "over", "over", 150_000, 0.9, c4, data="t.csv", budget=100_000),
    ]
    write_comparison(runs, tmp_path / "cmp")
    ax, legend, front, names = _axes_facts(figures[-1])
    assert front[0].get_label() == "Pareto front (one per budget)" and "Pareto front (one per budget)" in legend
    assert [list(f.get_data()[0]) for f in front] == [[6_148], [84_484], [665_092]]  # 'over' is over its budget
    assert [l for l in legend if l.startswith("budget")] == ["budget line"]  # one entry, each line its own note
    assert sorted(t.get_text() for t in ax.texts if t.get_text().startswith("budget")) == [
        "budget 100k",
        "budget 10k",
        "budget 1M",
    ]


def test_difference_inside_noise_has_no_winner(tmp_path, figures):
    a, b = _nested(300, [273, 270], seed=3)
    b[np.flatnonzero(~a)[:5]] = True  # some disagreements both ways
    b[np.flatnonzero(a & b)[:5]] = False
    runs = [_fake_run(tmp_path / "a", "x", 5000, 0.9, a), _fake_run(tmp_path / "b", "x", 6000, 0.9, b)]
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    assert "beats" not in text.replace('"beats"', "")
    assert "a vs b: difference within noise (p=" in text
    # far apart on the same rows: a winner, stated with its p-value
    c, d = _nested(300, [290, 240], seed=4)
    runs = [_fake_run(tmp_path / "c", "x", 5000, 0.9, c), _fake_run(tmp_path / "d", "x", 6000, 0.9, d)]
    assert "**c beats d** (p<0.001" in write_comparison(runs, tmp_path / "cmp2").read_text()


def test_falls_back_to_validation_when_no_shared_test_set(tmp_path, figures):
    (c1,) = _nested(100, [90])
    runs = [_fake_run(tmp_path / "a", "x", 5000, 0.91, c1), _fake_run(tmp_path / "b", "x", 20000, 0.90)]
    text = write_comparison(runs, tmp_path / "cmp").read_text()
    assert "Ranked by **validation accuracy (300 rows)**" in text and "optimistic" in text
    assert "no paired test" in text and "beats" not in text.replace('"beats"', "")
    ax, legend, front, _ = _axes_facts(figures[-1])
    assert ax.get_xscale() == "log"  # 5k..1M budget line spans more than 10x
    assert "validation accuracy" in ax.get_title().lower()
    assert not any("not ranked" in l for l in legend)  # nothing but what is drawn


def test_display_names():
    from pathlib import Path

    assert display_names([Path("runs/a"), Path("runs/b")]) == ["a", "b"]
    assert display_names([Path("x/run"), Path("y/run")]) == ["x/run", "y/run"]
    assert display_names([Path("x/run"), Path("x/run")]) == ["x/run (1)", "x/run (2)"]
    assert display_names([Path("runs/a"), Path("runs/b")], ["big"]) == ["big", "b"]


def test_three_tiny_trained_runs_through_the_cli(tmp_path, tiny_config, data_dir, figures, capsys):
    cfg = tmp_path / "tiny.yaml"
    values = tiny_config(
        model={"labels": None},
        head={"type": "linear", "pooling": "mean"},
        adapter={"r": 8, "alpha": 16, "modules": ["query", "key", "value", "output"]},
        training={"max_steps": 2, "epochs": 3.0, "batch_size": 32, "learning_rate": 2e-2, "log_every": 1, "seed": 42},
    )
    cfg.write_text(yaml.safe_dump(values))
    runs = tmp_path / "runs"
    variants = {
        "tiny": [],
        "tiny-r2": ["adapter.r=2", "adapter.alpha=4"],
        "tiny-r1q": ["adapter.r=1", "adapter.alpha=2", "adapter.modules=[query]"],
    }
    for out, sets in variants.items():
        argv = ["train", str(cfg), "--output", str(runs / out), "--no-report"] + [x for s in sets for x in ("--set", s)]
        assert main(argv) == 0
        assert main(["evaluate", str(runs / out), "--data", str(data_dir / "test.csv"), "--no-report"]) == 0
    capsys.readouterr()
    assert (
        main(["compare", *(str(runs / o) for o in variants), "--name", "big", "--output", str(tmp_path / "cmp")]) == 0
    )
    out = capsys.readouterr().out
    assert "Ranked by **test accuracy on test.csv (80 rows)**" in out and "compare.csv" in out
    for name in ("big", "tiny-r2", "tiny-r1q"):
        assert f"| {name} |" in out
    ax, legend, front, names = _axes_facts(figures[-1])
    assert sorted(names) == ["big", "tiny-r1q", "tiny-r2"]
    assert ax.get_xscale() == "log"
    # the front is drawn through test-accuracy points
    records = [json.loads(p.read_text()) for o in variants for p in (runs / o / "evals").glob("*.json")]
    tests = {r["accuracy"] for r in records if r["kind"] == "evaluate"}
    assert len(front) == 1 and set(np.round(front[0].get_data()[1], 6)) <= {round(100 * t, 6) for t in tests}


def _label_boxes(fig):
    """Each run label's text box in pixels (budget notes and leader lines left out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lorabudget.report.plots import text_box

    ax = fig.axes[0]
    renderer = FigureCanvasAgg(fig).get_renderer()  # a closed figure lost its canvas; same dpi, same pixels
    labels = [t for t in ax.texts if not t.get_text().startswith("budget ") and t.get_gid() != "label-key"]
    return labels, [text_box(t, renderer) for t in labels]


def test_a_run_at_chance_is_marked_at_the_edge_and_the_range_fits_the_others(tmp_path, figures):
    # Twelve runs that learned (84-88%) and one at chance (25%) on the same 1,000 rows, under three budgets.
    counts = [850, 845, 840, 838, 866, 864, 875, 860, 858, 855, 880, 835, 250]
    params = [6_148, 8_452, 9_220, 9_940, 29_188, 31_492, 84_484, 84_484, 86_532, 95_140, 665_092, 9_000, 9_732]
    budgets = [10_000] * 4 + [100_000] * 2 + [100_000] * 4 + [1_000_000, 10_000, 10_000]
    runs = [
        _fake_run(tmp_path / f"run-{k}-with-a-long-name", "x", p, 0.9, c, data="t.csv", budget=b)
        for k, (p, c, b) in enumerate(zip(params, _nested(1000, counts), budgets))
    ]
    write_comparison(runs, tmp_path / "cmp")
    fig = figures[-1]
    ax, legend, front, names = _axes_facts(fig)
    bottom, top = ax.get_ylim()
    assert 75 < bottom < 84.0 and 88.5 < top < 95  # fits the runs that learned, not the one at 25%
    [chance] = [t for t in ax.texts if "run-12-" in t.get_text()]
    assert chance.get_text() == "run-12-with-a-long-name (25.0%)"
    [edge_marks] = [c for c in ax.collections if c.get_label().startswith("far below the range")]
    [(_, edge_y)] = edge_marks.get_offsets()
    assert bottom < edge_y < bottom + 0.2 * (top - bottom)  # at the bottom edge, inside the axes
    # every run has a label, and no two labels' boxes overlap; all lie inside the axes
    labels, boxes = _label_boxes(fig)
    assert len(labels) == len(runs)
    frame = ax.get_window_extent(fig.canvas.get_renderer())  # the canvas _label_boxes attached
    for a in range(len(boxes)):
        assert frame.x0 <= boxes[a].x0 and boxes[a].x1 <= frame.x1 and frame.y0 <= boxes[a].y0 <= frame.y1
        for b in range(a + 1, len(boxes)):
            assert not boxes[a].overlaps(boxes[b]), (labels[a].get_text(), labels[b].get_text())
    # one front per budget; each budget line's best run is starred
    assert [list(f.get_data()[0]) for f in front] == [[6_148], [29_188, 84_484], [665_092]]
    [stars] = [c for c in ax.collections if c.get_label() == "best run within each budget"]
    assert sorted(map(tuple, np.round(stars.get_offsets(), 6).tolist())) == [(6_148, 85), (84_484, 87.5), (665_092, 88)]


def test_labels_that_find_no_free_place_are_numbered_with_a_key(tmp_path, figures):
    # Sixteen runs on one spot with long names: no room beside the point for every name.
    counts = [870] * 16
    long = "a-rather-long-run-name-" * 3
    runs = [
        _fake_run(tmp_path / f"{long}{k:02d}", "x", 50_000, 0.9, c, data="t.csv", budget=100_000)
        for k, c in enumerate(_nested(1000, counts))
    ]
    write_comparison(runs, tmp_path / "cmp")
    fig = figures[-1]
    labels, boxes = _label_boxes(fig)
    assert len(labels) == 16
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            assert not boxes[a].overlaps(boxes[b])
    [key] = [t for t in fig.axes[0].texts if t.get_gid() == "label-key"]
    numbered = [t.get_text() for t in labels if t.get_text().startswith("[")]
    assert numbered and all(f"{n} {long}" in key.get_text() for n in numbered)
