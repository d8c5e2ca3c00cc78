"""The cost estimate of `plan --data` and `train`: a pure function of shape, cached layers, lengths,
schedule and injected rates (nothing is timed here except the tiny layer probe's smoke run), the
FLOP model under (IA)3 and BitFit, the layer probe's cache, and what plan, train and the CLI print."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lorabudget.config import from_dict
from lorabudget.model import estimate as est
from lorabudget.model import flops, layerprobe
from lorabudget.training import costs

RATES = est.Throughput(forward=2e9, train=1e9, precision="fp32", basis="injected")


@pytest.fixture
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def _shape(layers: int = 4, trainable_from: int = 0, d: int = 8, i: int = 16) -> flops.EncoderShape:
    """A hand-made encoder: LoRA rank 2 on query and value of the layers from ``trainable_from`` up."""

    def layer(trains: bool) -> flops.LayerShape:
        rank = 2 if trains else 0
        sites = {
            name: flops.LinearSite(d, d, lora_rank=rank if name in ("query", "value") else 0) for name in flops.SITES
        }
        sites["intermediate"] = flops.LinearSite(d, i)
        sites["output"] = flops.LinearSite(i, d)
        return flops.LayerShape(sites)

    return flops.EncoderShape(d, tuple(layer(n >= trainable_from) for n in range(layers)), head=((d, 4),))


def _work(lengths, epochs: int = 1, batch_size: int = 8, validation=None, multiple: int = 8) -> est.Workload:
    lengths = np.asarray(lengths)
    per_epoch = -(-len(lengths) // batch_size)
    val = np.asarray(validation if validation is not None else lengths[:20])
    return est.run_workload(lengths, val, batch_size, 7, per_epoch * epochs, epochs, 16, 1024, True, multiple)


LENGTHS = np.random.default_rng(0).integers(5, 120, size=200)


# --------------------------------------------------------------------------------------------
# The pure estimate


def test_the_estimate_is_a_deterministic_function_of_its_inputs():
    shape, work = _shape(), _work(LENGTHS, epochs=2)
    first = est.estimate_time(shape, work, RATES)
    again = est.estimate_time(_shape(), _work(LENGTHS.copy(), epochs=2), RATES)
    assert first == again and first.seconds > 0
    # Twice the rates: half the time, exactly.
    faster = est.estimate_time(shape, work, est.Throughput(4e9, 2e9))
    assert faster.seconds == pytest.approx(first.seconds / 2)
    assert first.seconds == pytest.approx(first.train_seconds + first.eval_seconds + first.cache_fill_seconds)


@pytest.mark.parametrize(
    "lengths, tolerance",
    [
        (np.full(96, 40), 1e-12),  # equal lengths: every epoch pads alike, exactly proportional
        (LENGTHS, 0.05),  # another shuffle per epoch: nearly proportional
    ],
)
def test_more_epochs_cost_proportionally_more(lengths, tolerance):
    shape = _shape()
    one = est.estimate_time(shape, _work(lengths, epochs=1), RATES)
    three = est.estimate_time(shape, _work(lengths, epochs=3), RATES)
    assert three.epochs == 3 and one.epochs == 1
    assert three.seconds == pytest.approx(3 * one.seconds, rel=tolerance)
    assert three.epoch_seconds == pytest.approx(one.epoch_seconds, rel=tolerance)


def test_a_warm_frozen_prefix_cache_costs_less_than_none_and_a_cold_one_pays_the_fill():
    shape, work = _shape(layers=6, trainable_from=4), _work(LENGTHS, epochs=3)
    without = est.estimate_time(shape, work, RATES)
    cold = est.estimate_time(shape, work, RATES, cached_layers=4)
    warm = est.estimate_time(shape, work, RATES, cached_layers=4, warm=True)
    assert warm.seconds < without.seconds and warm.cache_fill_seconds == 0
    assert cold.seconds == pytest.approx(warm.seconds + cold.cache_fill_seconds) and cold.cache_fill_seconds > 0
    assert cold.seconds < without.seconds  # three epochs and three validation passes: the cache pays


def test_the_head_s_class_vectors_cost_a_forward_pass_over_the_training_rows_above_the_cache():
    """``head.init: prototypes`` or a prototype head: one inference pass over the training rows before
    training, through the layers the cache does not serve."""
    shape, lengths = _shape(layers=6, trainable_from=4), np.asarray(LENGTHS)
    plain = _work(lengths)
    micro = -(-len(lengths) // 8)
    with_init = est.run_workload(lengths, lengths[:20], 8, 7, micro, 1, 16, 1024, True, 8, head_init=True)
    assert plain.head_init == est.Sums() and with_init.head_init == est.Sums.of(
        est.inference_batches(lengths, 16, 1024)
    )
    before = est.estimate_time(shape, plain, RATES)
    after = est.estimate_time(shape, with_init, RATES)
    assert before.head_init_seconds == 0 < after.head_init_seconds
    assert after.seconds == pytest.approx(before.seconds + after.head_init_seconds)
    cached = est.estimate_time(shape, with_init, RATES, cached_layers=4, warm=True)
    assert 0 < cached.head_init_seconds < after.head_init_seconds / 2  # two of six layers run


def test_frozen_layers_cost_a_forward_and_trainable_ones_forward_and_backward():
    """Backward depth: adapters on the top layers only leave the bottom ones forward-only."""
    work = _work(LENGTHS)
    everywhere = est.estimate_time(_shape(trainable_from=0), work, RATES)
    top = est.estimate_time(_shape(trainable_from=3), work, RATES)
    assert top.train_seconds < everywhere.train_seconds
    assert top.eval_seconds == pytest.approx(everywhere.eval_seconds, rel=0.05)  # LoRA's few products only


def test_padding_follows_the_bucket_ladder():
    lengths = np.array([17] * 8 + [40] * 8)
    assert sorted(est.training_batches(lengths, 8, 0, 0, True, 8)) == [(8, 24), (8, 40)]  # fp32: steps of 8
    assert sorted(est.training_batches(lengths, 8, 0, 0, True, 16)) == [(8, 32), (8, 40)]  # bf16: steps of 16
    assert est.training_batches(np.array([17] * 8), 8, 0, 0, True, 16) == [(8, 17)]  # the longest row caps it
    assert est.inference_batches(np.array([3, 30, 30]), 2, None) == [(2, 30), (1, 8)]


def test_memory_grows_with_the_position_cap_and_precision():
    def peak(cap, bf16=False):
        positions, width = est.largest_chunk(LENGTHS, 32, cap, 8)
        m = est.MemoryInputs(10**6, 10**4, 384, 1536, 12, 6, bf16, positions, width, 5000, 200, 0, 10**8)
        return est.peak_memory(m)

    small, large, uncapped = peak(256), peak(1024), peak(None)
    assert small["activations"] < large["activations"] < uncapped["activations"]
    assert small["total"] < large["total"] < uncapped["total"]
    assert small["total"] == sum(v for k, v in small.items() if k != "total")
    assert peak(1024, bf16=True)["frozen_weights"] == 6 * 10**6  # fp32 master plus the bf16 copy
    assert peak(1024)["trainable"] == 20 * 10**4


@pytest.mark.parametrize(
    "training, rows, expected",
    [
        ({"epochs": 3, "batch_size": 10}, 95, (30, 30, 3)),
        ({"epochs": 1.5, "batch_size": 10}, 95, (15, 15, 2)),
        ({"max_steps": 4, "batch_size": 10}, 95, (4, 4, 1)),
        ({"epochs": 2, "batch_size": 10, "gradient_accumulation": 4}, 95, (20, 6, 2)),
        ({"epochs": 2, "batch_size": 10, "eval_every": 4}, 95, (20, 20, 5)),
    ],
)
def test_schedule_counts_batches_steps_and_validation_passes(tiny_config, training, rows, expected):
    assert costs.schedule(from_dict(tiny_config(training=training)), rows) == expected


@pytest.mark.parametrize(
    "setting, depth, epochs, warm, used",
    [
        ("auto", 0, 3, False, 0),
        ("auto", 4, 1, False, 0),  # one pass: computing the prefix once is all it would do
        ("auto", 4, 3, False, 4),
        ("auto", 4, 1, True, 4),
        (True, 4, 1, False, 4),
        (False, 4, 3, True, 0),
        (True, 0, 3, False, 0),
    ],
)
def test_when_the_frozen_prefix_cache_is_used(setting, depth, epochs, warm, used):
    assert costs.cached_layers_used(setting, depth, epochs, warm)[0] == used


# --------------------------------------------------------------------------------------------
# The FLOP model under methods without products of their own


@pytest.mark.parametrize(
    "adapter",
    [
        {"method": "ia3", "modules": ["key", "value"]},
        {"method": "ia3", "modules": ["key", "value", "output"], "layers": [1, 2]},  # output: scales the input
        {"method": "bitfit"},
    ],
)
def test_flops_match_torch_for_methods_without_products(adapter, tiny_bert):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lorabudget.model.build import build_model

    cfg = from_dict(
        {
            "model": {"name": str(tiny_bert)},
            "head": {"type": "linear", "pooling": "mean"},
            "adapter": adapter,
            "budget": {"max_trainable_params": 10**9},
        }
    )
    model = build_model(cfg).model.eval()
    ids = torch.randint(5, 30, (3, 10))
    shape = flops.encoder_shape(model)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward:
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        with FlopCounterMode(display=False) as backward:
            logits.sum().backward()
    assert flops.forward_coefficients(shape).batch(3, 10) == forward.get_total_flops()
    assert flops.backward_coefficients(shape).batch(3, 10) == backward.get_total_flops()
    per_layer = flops.layer_coefficients(shape)
    total = flops.head_coefficients(shape)[1]
    for _, b in per_layer:
        total = total + b
    assert total == flops.backward_coefficients(shape)


# --------------------------------------------------------------------------------------------
# The layer probe and its cache


def _timing(model, shape, rows, width, precision, threads, fast, calls):
    calls.append((rows, width, precision))
    return layerprobe.LayerTiming(1, rows, width, precision, threads or 1, 0.01, 0.03, 1e7, 3e7, 3)


def test_the_layer_probe_is_measured_once_per_key_and_a_bad_cache_file_again(tiny_config, tmp_path):
    from lorabudget.model.build import build_model

    cfg = from_dict(tiny_config())
    model = build_model(cfg, weights=False).model
    shape = flops.encoder_shape(model)
    calls = []

    def measure(*args):
        return _timing(*args, calls)

    first = layerprobe.cached_layer_probe(model, shape, 4, 16, "fp32", 1, tmp_path, measure=measure)
    again = layerprobe.cached_layer_probe(model, shape, 4, 16, "fp32", 1, tmp_path, measure=measure)
    assert len(calls) == 1 and again.cached and again.throughput().train == pytest.approx(first.throughput().train)
    layerprobe.cached_layer_probe(model, shape, 4, 24, "fp32", 1, tmp_path, measure=measure)  # another width
    assert len(calls) == 2
    files = sorted((tmp_path / "precision").glob("layer-probe-*.json"))
    assert len(files) == 2
    (path,) = [f for f in files if json.loads(f.read_text())["key"]["width"] == 16]
    for bad in ("{", json.dumps({"key": "other"}), ""):  # truncated, foreign, empty: measured again
        path.write_text(bad)
        layerprobe.cached_layer_probe(model, shape, 4, 16, "fp32", 1, tmp_path, measure=measure)
    assert len(calls) == 5


def test_the_layer_probe_runs_on_a_tiny_layer(tiny_config):
    from lorabudget.model.build import build_model

    cfg = from_dict(tiny_config(adapter={"layers": [1, 2]}))
    model = build_model(cfg, weights=False).model
    shape = flops.encoder_shape(model)
    assert layerprobe.probed_layer(model, shape) == (2, True)
    timing = layerprobe.probe_layer(model, shape, 4, 16, "fp32", threads=1, budget_s=0.01)
    assert timing.layer == 2 and timing.forward_s > 0 and timing.train_s > 0
    assert timing.train_flops > timing.forward_flops > 0


def test_the_estimate_builds_its_meta_model_once_and_probes_that_one(tiny_config, monkeypatch):
    from lorabudget.model import build
    from lorabudget.training.setup import prepare_data

    cfg = from_dict(tiny_config())  # its own cache folder: the layer timing is not cached yet
    data = prepare_data(cfg, log=lambda _: None)
    built, probed = [], []
    real_build = build.build_model

    def counted_build(*args, **kwargs):
        result = real_build(*args, **kwargs)
        built.append(result.model)
        return result

    def measure(model, *args):
        probed.append(model)
        return _timing(model, *args, [])

    monkeypatch.setattr(build, "build_model", counted_build)
    monkeypatch.setattr(layerprobe, "probe_layer", measure)
    estimate = costs.estimate_run(cfg, data, precision="fp32", runtime_bytes=0)
    assert len(built) == 1 and len(probed) == 1 and probed[0] is built[0]
    # The probe gives one layer of that model weights in place: the memory counts read from it are unchanged.
    monkeypatch.setattr(costs, "measured_rates", lambda *a, **k: RATES)
    assert costs.estimate_run(cfg, data, precision="fp32", runtime_bytes=0).memory == estimate.memory


# --------------------------------------------------------------------------------------------
# plan, train and the CLI


def test_plan_with_data_estimates_and_without_says_data_is_needed(tiny_config, monkeypatch):
    import lorabudget as lb

    monkeypatch.setattr(costs, "measured_rates", lambda *a, **k: RATES)
    values = tiny_config()
    with_data = lb.plan(values)
    assert with_data.estimate is not None and with_data.estimate.seconds > 0
    assert with_data.estimate.peak_bytes > 0 and with_data.estimate.epoch_seconds < with_data.estimate.seconds
    text = str(with_data)
    assert "estimated training time: " in text and "estimated peak memory: " in text and "basis: " in text
    assert lb.plan(values).estimate.time == with_data.estimate.time  # the same inputs, the same estimate
    values["data"]["train"] = "ag_news"  # a dataset name, not a local file: nothing to measure lengths on
    without = lb.plan(values)
    assert without.estimate is None and "--data needed for a time estimate" in str(without)
    assert "estimated" not in str(lb.plan(tiny_config(), estimate=False))


def test_cli_plan_with_data_prints_the_estimate(tiny_config, tmp_path, data_dir, monkeypatch, capsys):
    import yaml

    from lorabudget.cli import main

    monkeypatch.setattr(costs, "measured_rates", lambda *a, **k: RATES)
    values = tiny_config()
    values["data"]["train"] = "ag_news"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    assert main(["plan", str(path)]) == 0
    assert "--data needed for a time estimate" in capsys.readouterr().out
    assert main(["plan", str(path), "--data", str(data_dir / "train.csv")]) == 0
    out = capsys.readouterr().out
    assert "estimated training time: " in out and " per epoch × 2" in out and "estimated peak memory: " in out


def test_train_prints_the_estimate_and_summary_records_it_beside_the_actuals(
    tiny_config, tmp_path, monkeypatch, fresh_accelerate_state
):
    from lorabudget.training.loop import train

    monkeypatch.setattr(costs, "measured_rates", lambda *a, **k: RATES)
    cfg = from_dict(tiny_config(training={"max_steps": 3, "log_every": 1}))
    lines = []
    summary = train(cfg, tmp_path / "run", log=lines.append)
    assert sum(line.startswith("estimated training time: ") for line in lines) == 1
    assert sum(line.startswith("estimated peak memory: ") for line in lines) == 1
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    for record in (summary, written):
        assert set(record["estimate"]) >= {"train_seconds", "peak_bytes", "basis"}
        assert record["estimate"]["train_seconds"] > 0 and record["estimate"]["peak_bytes"] > 0
        assert record["train_time_s"] > 0 and record["peak_rss_bytes"] > 0


def test_an_estimate_that_fails_never_stops_a_run(tiny_config, tmp_path, monkeypatch, fresh_accelerate_state):
    from lorabudget.training.loop import train

    def broken(*args, **kwargs):
        raise RuntimeError("no layer here")

    monkeypatch.setattr(costs, "estimate_run", broken)
    lines = []
    summary = train(from_dict(tiny_config(training={"max_steps": 2})), tmp_path / "run", log=lines.append)
    assert "no time estimate: no layer here" in lines and summary["estimate"] is None


def test_the_layer_probe_leaves_the_global_random_state_alone(tiny_config):
    """A run's dropout masks must not depend on whether the probe ran or came from the cache."""
    from lorabudget.model.build import build_model

    cfg = from_dict(tiny_config())
    model = build_model(cfg, weights=False).model
    shape = flops.encoder_shape(model)
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    layerprobe.probe_layer(model, shape, 4, 16, "fp32", threads=1, budget_s=0.01)
    assert torch.equal(torch.random.get_rng_state(), before)
