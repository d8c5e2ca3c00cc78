"""Figures that do not mislead: smoothing that does not lag, axes that do not blow noise up into spikes,
no label over another label or a reference line, budgets named once, one Pareto front per budget."""

import math

import numpy as np
import pytest

import lorabudget.report.figures as figures
from lorabudget.report.compare import plot_comparison
from lorabudget.report.compare_figure import draw_comparison
from lorabudget.report.plots import centred_mean, collisions, pyplot, steady_limits
from lorabudget.stats import accuracy_interval

# The run that showed the lag: logged every 10 steps; the old EMA drew 0.88 at step 50 (raw 0.42), 0.60 at the end.
LAG_STEPS = list(range(10, 100, 10))
LAG_LOSS = [1.386, 0.80, 0.55, 0.47, 0.42, 0.41, 0.40, 0.40, 0.40]
# The validation losses whose axis spanned 0.347-0.358 and drew the noise as a spike.
FLAT_LOSS = [0.352, 0.349, 0.358, 0.347, 0.351, 0.350]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the run report draws, kept open for measuring (saved as usual)."""
    kept = []
    save = figures.save_figure

    def keep(fig, path):
        kept.append(fig)
        save(fig, path)

    monkeypatch.setattr(figures, "save_figure", keep)
    return kept


def _within_window(raw, smooth, h):
    return all(
        min(raw[max(0, i - h) : i + h + 1]) - 1e-12 <= s <= max(raw[max(0, i - h) : i + h + 1]) + 1e-12
        for i, s in enumerate(smooth)
    )


def _old_ema(values, weight=0.8):
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def test_the_reported_lag_is_real_and_gone():
    old = _old_ema(LAG_LOSS)
    assert round(old[4], 2) == 0.88 and round(old[-1], 2) == 0.60  # the exact figures seen
    for h in range(5):
        smooth = centred_mean(LAG_LOSS, h)
        assert _within_window(LAG_LOSS, smooth, h), h
        assert smooth[4] <= max(LAG_LOSS[max(0, 4 - h) : 4 + h + 1]) and smooth[-1] == pytest.approx(0.40)
    assert centred_mean(LAG_LOSS, 2)[4] == pytest.approx(np.mean(LAG_LOSS[2:7]))  # 0.45, not 0.88


def test_training_loss_figure_draws_no_line_above_the_raw_loss_window(drawn, tmp_path):
    figures.plot_training_loss([{"step": s, "loss": v} for s, v in zip(LAG_STEPS, LAG_LOSS)], tmp_path / "a.png", "x")
    lines = drawn[-1].axes[0].get_lines()
    for line in lines:
        xs, ys = line.get_data()
        assert ys[list(xs).index(50)] <= 0.55 and ys[-1] <= 0.41, line.get_label()
    # a long noisy decay: the smoothed line is a centred window mean, inside its window everywhere
    rng = np.random.default_rng(1)
    loss = [0.4 + math.exp(-t / 30) + 0.08 * rng.standard_normal() for t in range(200)]
    figures.plot_training_loss([{"step": 5 * t, "loss": v} for t, v in enumerate(loss)], tmp_path / "b.png", "x")
    [smooth] = [l for l in drawn[-1].axes[0].get_lines() if l.get_label().startswith("smoothed")]
    h = (int(smooth.get_label().split("of ")[1].split()[0]) - 1) // 2
    assert h >= 5 and _within_window(loss, smooth.get_data()[1], h)
    trend = np.array([0.4 + math.exp(-t / 30) for t in range(200)])
    assert np.abs(smooth.get_data()[1] - trend)[h:-h].max() < 0.1  # follows the decay, no trailing


def _evals(n, loss=None, every=3, seed=0):
    rng = np.random.default_rng(seed)
    out, best = [], 0.0
    for k in range(n):
        s = every * (k + 1)
        acc = 0.9 - 0.5 * math.exp(-s / (every * n / 4)) + 0.005 * rng.standard_normal()
        out.append(
            {
                "step": s,
                "accuracy": acc,
                "macro_f1": acc - 0.01,
                "loss": loss[k] if loss else 0.35 + 0.5 * math.exp(-s / 20),
                "best": acc > best,
            }
        )
        best = max(best, acc)
    return out


def test_flat_validation_loss_is_not_drawn_as_a_spike(drawn, tmp_path):
    evals = _evals(len(FLAT_LOSS), loss=FLAT_LOSS)
    for r in evals:
        r["accuracy"], r["macro_f1"] = 0.88 + 0.003 * (r["step"] % 2), 0.87
    figures.plot_validation(evals, tmp_path / "v.png", "x")
    acc_ax, loss_ax = drawn[-1].axes
    lo, hi = loss_ax.get_ylim()
    assert (0.358 - 0.347) / (hi - lo) < 0.15  # was the whole axis
    lo, hi = acc_ax.get_ylim()
    assert hi - lo >= 0.06 and 0 <= lo and hi <= 1
    # with the row count: 95% interval drawn, the axis no narrower than eight standard errors
    figures.plot_validation(evals, tmp_path / "v.png", "x", rows=300)
    acc_ax, _ = drawn[-1].axes
    lo, hi = acc_ax.get_ylim()
    assert hi - lo >= 8 * math.sqrt(0.88 * 0.12 / 300)
    [band] = [c for c in acc_ax.collections if c.get_paths()]
    low, high = accuracy_interval(0.88, 300)
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(low, abs=0.01)
    assert any(t.get_text() == "accuracy 95% interval (300 rows)" for t in acc_ax.get_legend().get_texts())


def test_a_real_change_still_fills_the_axis(drawn, tmp_path):
    loss = [1.2, 0.8, 0.5, 0.4, 0.36, 0.35]
    figures.plot_validation(_evals(6, loss=loss), tmp_path / "v.png", "x")
    lo, hi = drawn[-1].axes[1].get_ylim()
    assert (1.2 - 0.35) / (hi - lo) > 0.8


def test_steady_limits_widen_small_ranges_inside_the_bounds():
    assert steady_limits([0.995, 0.998], 0.06, floor=0.0, ceiling=1.0, margin=0)[1] == 1.0
    lo, hi = steady_limits([0.995, 0.998], 0.06, floor=0.0, ceiling=1.0, margin=0)
    assert hi - lo == pytest.approx(0.06)
    assert steady_limits([0.01, 0.02], 0.3, floor=0.0, margin=0) == (0.0, pytest.approx(0.3))
    assert steady_limits([0.2, 0.9], 0.1, margin=0) == (0.2, 0.9)  # wide enough already: untouched


def test_the_collision_check_finds_overlaps_and_crossed_lines():
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one label")
    ax.text(0.52, 0.5, "another label")
    assert any("overlaps" in c for c in collisions(fig))
    fig, ax = plt.subplots()
    ax.hlines(0.5, 0, 1, linestyles="--")
    ax.set_ylim(0, 1)
    ax.text(0.5, 0.5, "on the line", va="center")
    assert collisions(fig) == ["dashed line '_child0' crosses text 'on the line'"]
    plt.close("all")


def _eval_record(names, seed=0):
    rng = np.random.default_rng(seed)
    k = len(names)
    cm = rng.integers(0, 500, size=(k, k)) + np.eye(k, dtype=int) * 3000
    return {
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "accuracy": 0.9,
        "rows": int(cm.sum()),
        "confidence": list(rng.uniform(1 / k, 1, 2000)),
        "correct": list(rng.uniform(0, 1, 2000) < 0.8),
    }


def _every_figure(tmp_path, evaluations, names, seed=0):
    rng = np.random.default_rng(seed)
    train = [
        {"step": s, "loss": 0.4 + math.exp(-s / 15) + 0.05 * rng.standard_normal()}
        for s in range(1, 3 * evaluations + 1)
    ]
    figures.plot_training_loss(train, tmp_path / "loss.png", "a-run-with-a-long-name")
    figures.plot_validation(_evals(evaluations, every=500 if evaluations > 100 else 3), tmp_path / "val.png", "run")
    ev = _eval_record(names, seed)
    figures.plot_confusion(ev, tmp_path / "cm.png")
    figures.plot_reliability(ev, tmp_path / "rel.png")
    counts = {n: int(c) for n, c in zip(names, rng.integers(100, 3000, len(names)))}
    shares = np.array(list(counts.values())) * rng.uniform(0.95, 1.05, len(names))
    pred = {"counts": counts, "input": "unlabelled.csv"}
    figures.plot_prediction_distribution(pred, names, list(shares / shares.sum()), tmp_path / "pred.png")


@pytest.mark.parametrize("evaluations", [2, 200])
@pytest.mark.parametrize(
    "names", [["0", "1", "2", "3"], ["World", "Sports", "Business", "Sci/Tech"], [f"class-name-{i}" for i in range(10)]]
)
def test_no_label_collides_short_or_long_run(drawn, tmp_path, evaluations, names):
    # Seen: the kept-checkpoint note over the loss axis label (2 evaluations), counts struck through by the
    # dashed expected lines and by the calibration diagonal, ten class names over each other.
    _every_figure(tmp_path, evaluations, names)
    assert len(drawn) == 5
    for fig in drawn:
        assert collisions(fig) == [], fig.axes[0].get_title()


def _row(name, params, budget, acc, classes=None, n=1000):
    return (
        {"display": name, "trainable_params": params, "budget": budget, "validation": None, "classes": classes},
        {"accuracy": acc, "ci95": list(accuracy_interval(acc, n)), "n": n},
    )


def _compare(*made):
    rows, scores = zip(*made)
    return draw_comparison(list(rows), {"kind": "validation", "label": "validation accuracy", "scores": list(scores)})


def _fronts(fig):
    return [list(l.get_data()[0]) for l in fig.axes[0].get_lines() if l.get_gid() == "pareto-front"]


def test_budgets_named_once_and_one_front_per_budget():
    # Six runs under three budgets (two each): the 10k runs' front must not run on to the 100k runs.
    fig = _compare(
        _row("a", 5_000, 10_000, 0.84),
        _row("b", 9_000, 10_000, 0.86),
        _row("c", 20_000, 100_000, 0.85),
        _row("d", 60_000, 100_000, 0.88),
        _row("e", 300_000, 1_000_000, 0.87),
        _row("f", 900_000, 1_000_000, 0.89),
    )
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_legend().get_texts()]
    for note in ("budget 10k", "budget 100k", "budget 1M"):
        assert texts.count(note) == 1
    assert [t for t in texts if t.startswith("budget")] == ["budget 10k", "budget 100k", "budget 1M", "budget line"]
    assert sum(l.get_linestyle() == "--" for l in ax.get_lines()) == 3  # one line per distinct budget
    assert _fronts(fig) == [[5_000, 9_000], [20_000, 60_000], [300_000, 900_000]]
    assert [t.get_text() for t in ax.get_legend().get_texts()].count("Pareto front (one per budget)") == 1
    assert collisions(fig) == []
    pyplot().close(fig)


def test_close_budgets_keep_their_notes_apart():
    fig = _compare(_row("a", 80_000, 84_000, 0.84), _row("b", 95_000, 100_000, 0.86), _row("c", 5_000, 100_000, 0.8))
    notes = [t for t in fig.axes[0].texts if t.get_text().startswith("budget")]
    assert len(notes) == 2 and collisions(fig) == []
    assert _fronts(fig) == [[80_000], [5_000, 95_000]]
    pyplot().close(fig)


def test_class_sets_get_their_own_markers_and_fronts():
    four, two = ["World", "Sports", "Business", "Sci/Tech"], ["negative", "positive"]
    fig = _compare(
        _row("ag-small", 5_000, 100_000, 0.85, four),
        _row("ag-big", 50_000, 100_000, 0.90, four),
        _row("sst-small", 8_000, 100_000, 0.88, two),
        _row("sst-big", 70_000, 100_000, 0.91, two),
    )
    ax = fig.axes[0]
    markers = {c.get_label(): c.lines[0].get_marker() for c in ax.containers}
    assert len(markers) == 2 and len(set(markers.values())) == 2
    assert any("classes: World, Sports, Business, Sci/Tech" in k for k in markers)
    assert any("classes: negative, positive" in k for k in markers)
    assert sorted(_fronts(fig)) == [[5_000, 50_000], [8_000, 70_000]]  # never across class sets
    assert "Pareto front (one per budget and class set)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert collisions(fig) == []
    pyplot().close(fig)
    # one class set (or none given): one marker, the legend as before
    fig = _compare(_row("x", 5_000, 100_000, 0.85), _row("y", 50_000, 100_000, 0.9))
    assert [c.get_label() for c in fig.axes[0].containers] == ["validation accuracy, 95% interval"]
    pyplot().close(fig)


def test_figures_are_byte_identical_when_redrawn(tmp_path):
    made = [_row("a", 5_000, 10_000, 0.84), _row("b", 60_000, 100_000, 0.88)]
    rows, scores = (list(x) for x in zip(*made))
    basis = {"kind": "validation", "label": "validation accuracy", "scores": scores}
    for name in ("one.png", "two.png"):
        assert plot_comparison(rows, basis, tmp_path / name)
        figures.plot_validation(_evals(30), tmp_path / f"val-{name}", "x", rows=500)
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    assert (tmp_path / "val-one.png").read_bytes() == (tmp_path / "val-two.png").read_bytes()


def test_interval_arms_of_a_perfect_score_are_not_negative():
    # Two runs at accuracy 1.0 (Wilson upper bound 0.9999999999999998) made `compare` a matplotlib traceback.
    from lorabudget.report.compare_figure import interval_arms

    low, high = interval_arms(100.0, (0.9873570287754538, 0.9999999999999998))
    assert high == 0.0 and abs(low - 1.26429712) < 1e-6
    assert interval_arms(50.0, None) == (0.0, 0.0)
