"""Precision selection (CPU capability and the bf16 probe mocked), the one line it logs, and the FLOP formulas."""

import json

import pytest
import torch

from lorabudget.config import from_dict
from lorabudget.errors import LorabudgetError
from lorabudget.model import cpu as hw
from lorabudget.model import flops
from lorabudget.model import precision as prec
from lorabudget.model import probe as probing


@pytest.fixture(autouse=True)
def measured_auto(monkeypatch):
    """These tests are about how ``auto`` decides: not the fixed choice conftest gives the others."""
    monkeypatch.delenv("LORABUDGET_AUTO_PRECISION", raising=False)


def test_choose_on_cpus_with_and_without_native_bf16():
    # No native bf16: auto is fp32 whatever was measured, and the reason says why.
    p = prec.choose("auto", "cpu", cpu_flags=())
    assert p.name == "fp32" and "no native bf16" in p.reason and p.accelerate_name == "no"
    assert prec.choose("auto", "cpu", cpu_flags=(), bf16_speedup=3.0).name == "fp32"
    # Native bf16: the measured ratio decides, and the reason says what was measured.
    fast = prec.choose("auto", "cpu", cpu_flags=("avx512_bf16",), bf16_speedup=2.4)
    assert fast == prec.Precision("bf16", "auto: measured 2.40x faster than fp32 here")
    slow = prec.choose("auto", "cpu", cpu_flags=("avx512_bf16",), bf16_speedup=0.48)
    assert slow.name == "fp32" and slow.reason.startswith("auto: bf16 measured 0.48x here")
    assert fast.line("training") == "training precision: bf16 (auto: measured 2.40x faster than fp32 here)"
    # Only a clear margin picks bf16.
    margin = prec.BF16_MARGIN
    assert prec.choose("auto", "cpu", cpu_flags=("amx_bf16",), bf16_speedup=margin).name == "bf16"
    assert prec.choose("auto", "cpu", cpu_flags=("amx_bf16",), bf16_speedup=margin - 0.01).name == "fp32"
    assert prec.choose("auto", "cpu", cpu_flags=("amx_bf16",), bf16_speedup=1.1, margin=1.05).name == "bf16"
    # Not measured (or nonsense): fp32.
    for unknown in (None, float("nan"), float("inf")):
        p = prec.choose("auto", "cpu", cpu_flags=("avx512_bf16",), bf16_speedup=unknown)
        assert p.name == "fp32" and "could not be measured" in p.reason
    # A note (an unreliable probe) is carried into the reason.
    assert prec.choose("auto", "cpu", cpu_flags=("bf16",), bf16_speedup=2.0, note="not cached").reason.endswith(
        "here; not cached"
    )
    # Explicit requests win; bf16 without native support runs but says it will be slow.
    assert prec.choose("no", "cpu", cpu_flags=("avx512_bf16",), bf16_speedup=4.0).name == "fp32"
    assert prec.choose("fp32", "cuda", gpu_bf16=True).name == "fp32"
    slow = prec.choose("bf16", "cpu", cpu_flags=())
    assert slow.name == "bf16" and slow.accelerate_name == "bf16" and "slower" in slow.reason
    assert "slower" not in prec.choose("bf16", "cpu", cpu_flags=("avx512_bf16",)).reason
    forced = prec.choose("bf16", "cpu", cpu_flags=("avx512_bf16",), bf16_speedup=0.5)
    assert forced.name == "bf16" and "0.50x" in forced.reason
    # fp16 on a CPU would silently be fp32 in Accelerate: say so.
    assert prec.choose("fp16", "cpu").name == "fp32"


def test_choose_on_gpus():
    assert prec.choose("auto", "cuda", gpu_bf16=True).name == "bf16"
    assert prec.choose("auto", "cuda", gpu_bf16=False).name == "fp32"
    assert prec.choose("fp16", "cuda").accelerate_name == "fp16"
    with pytest.raises(ValueError):
        prec.choose("int8", "cpu")


def test_cpu_flags_read_from_cpuinfo(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    info = tmp_path / "cpuinfo"

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    for text, expected in [
        (
            "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n",
            ("amx_bf16", "avx512_bf16"),
        ),
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n", ()),  # AVX512 alone emulates bf16
        ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", ("bf16",)),
    ]:
        info.write_text(text)
        hw.cpu_bf16_flags.cache_clear()
        assert hw.cpu_bf16_flags() == expected
    hw.cpu_bf16_flags.cache_clear()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state; each Accelerator here needs its own precision."""
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def test_training_logs_exactly_one_precision_line(monkeypatch, tiny_config, fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    from lorabudget.training.setup import make_accelerator, make_optimizer

    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ())
    lines = []
    cfg = from_dict(tiny_config())
    accelerator = make_accelerator(cfg, log=lines.append)
    assert accelerator.mixed_precision == "no"
    assert lines == ["training precision: fp32 (auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag))"]
    # bf16 asked for: Accelerate really autocasts on a CPU (the linear layer computes in bf16).
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    lines.clear()
    AcceleratorState._reset_state(True)
    accelerator = make_accelerator(from_dict(tiny_config(training={"mixed_precision": "bf16"})), log=lines.append)
    assert lines == ["training precision: bf16 (requested)"] and accelerator.mixed_precision == "bf16"
    layer = torch.nn.Linear(8, 8)
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    prepared = accelerator.prepare(torch.nn.Sequential(layer))  # outputs of the prepared model come back fp32
    out = prepared(torch.randn(2, 8))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32 and layer.weight.dtype == torch.float32
    # AdamW kernel choice
    for impl, key in [("foreach", "foreach"), ("fused", "fused")]:
        opt = make_optimizer(torch.nn.Linear(4, 4), from_dict(tiny_config(training={"adamw_impl": impl})))
        assert opt.defaults[key] is True
    assert make_optimizer(torch.nn.Linear(4, 4), cfg).defaults["fused"] in (None, False)


def test_training_auto_probes_the_configs_shapes_on_its_threads(
    monkeypatch, tiny_config, tmp_path, fresh_accelerate_state
):
    from lorabudget.training.setup import make_accelerator

    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    seen = []
    monkeypatch.setattr(
        probing, "probe", lambda w, threads=None: seen.append((w, threads)) or _probe(w, threads, 2.0, 1.0)
    )
    lines = []
    accelerator = make_accelerator(from_dict(tiny_config(training={"threads": 1})), log=lines.append)
    assert accelerator.mixed_precision == "bf16"
    assert lines == ["training precision: bf16 (auto: measured 2.00x faster than fp32 here)"]
    # The tiny model's hidden 32 / intermediate 48, 16 rows x 64 positions, forward and backward, 1 thread.
    assert seen == [(probing.Workload(32, 48, 16 * 64, training=True), 1)]
    assert len(list((tmp_path / "cache" / "precision").glob("bf16-probe-*.json"))) == 1  # the config's cache dir


def test_inference_auto_logs_one_line(monkeypatch, tmp_path, tiny_roberta):
    from transformers import AutoModel

    from lorabudget.inference.batched import CPU_TOKENS_PER_BATCH, resolve_precision

    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = []
    monkeypatch.setattr(probing, "probe", lambda w, threads=None: seen.append(w) or _probe(w, threads, 3.0, 1.0))
    lines = []
    assert resolve_precision("auto", lines.append, cache_dir=str(tmp_path)) == "bf16"
    assert lines == ["inference precision: bf16 (auto: measured 3.00x faster than fp32 here)"]
    assert seen == [probing.representative(training=False)]  # no model: MiniLM's shape
    assert resolve_precision("bf16", lines.append) == "bf16" and len(lines) == 1  # explicit: no line, no probe
    model = AutoModel.from_pretrained(str(tiny_roberta))
    assert resolve_precision("auto", lines.append, model=model, cache_dir=str(tmp_path)) == "bf16"
    assert seen[-1] == probing.Workload(32, 48, CPU_TOKENS_PER_BATCH, training=False)  # the model's own shape


# --------------------------------------------------------------------------------------------
# The bf16 probe: decisions from injected measurements, the cache, and one untimed smoke run


def _probe(workload, threads, fp32_s, bf16_s, **kwargs):
    return probing.Probe(workload.fitted(), threads or torch.get_num_threads(), fp32_s, bf16_s, repeats=3, **kwargs)


@pytest.fixture
def counted_probe(monkeypatch):
    """probing.probe replaced by one that returns the next queued (fp32_s, bf16_s) and counts its calls."""
    calls = []
    queue = []

    def fake(workload, threads=None):
        calls.append((workload, threads))
        fp32_s, bf16_s = queue.pop(0) if queue else (2.0, 1.0)
        return _probe(workload, threads, fp32_s, bf16_s)

    monkeypatch.setattr(probing, "probe", fake)
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    return calls, queue


def test_auto_measures_once_per_machine_and_key(counted_probe, tmp_path, monkeypatch):
    calls, queue = counted_probe
    shape = probing.Workload(384, 1536, 1024, training=True)
    queue.append((2.4, 1.0))
    p = prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    assert p == prec.Precision("bf16", "auto: measured 2.40x faster than fp32 here") and len(calls) == 1
    files = list((tmp_path / "precision").glob("bf16-probe-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["threads"] == 2
    # Cached: the same decision without measuring again (the workload may come from a function).
    assert prec.resolve("auto", "cpu", workload=lambda: shape, threads=2, cache_dir=tmp_path) == p
    assert len(calls) == 1
    # Forced choices, GPUs and CPUs without native bf16 never measure.
    assert prec.resolve("no", "cpu", workload=shape, cache_dir=tmp_path).name == "fp32"
    assert prec.resolve("bf16", "cpu", workload=shape, cache_dir=tmp_path).name == "bf16"
    assert prec.resolve("auto", "cuda", workload=shape, cache_dir=tmp_path).name in ("bf16", "fp32")
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ())
    assert prec.resolve("auto", "cpu", workload=shape, cache_dir=tmp_path).name == "fp32"
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    assert len(calls) == 1
    # Each part of the key measures again: thread count, shapes, training vs inference, torch, CPU.
    queue.extend([(1.0, 2.0)] * 6)
    assert prec.resolve("auto", "cpu", workload=shape, threads=1, cache_dir=tmp_path).reason == (
        f"auto: bf16 measured 0.50x here, under the {prec.BF16_MARGIN:g}x it must win by"
    )
    prec.resolve("auto", "cpu", workload=probing.Workload(768, 3072, 1024, True), threads=2, cache_dir=tmp_path)
    prec.resolve("auto", "cpu", workload=probing.Workload(384, 1536, 1024, False), threads=2, cache_dir=tmp_path)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    monkeypatch.undo()  # back to the real torch version and flags; the fake probe again
    monkeypatch.delenv("LORABUDGET_AUTO_PRECISION", raising=False)  # undone with the rest
    calls_before = len(calls)
    monkeypatch.setattr(probing, "probe", lambda w, threads=None: calls.append(w) or _probe(w, threads, 1.0, 2.0))
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    info = dict(hw.cpu_info(), flags=("avx2", "avx512_bf16", "amx_bf16", "amx_tile"))
    monkeypatch.setattr(hw, "cpu_info", lambda: info)
    prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    info["model"] = "Some Other CPU"
    prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    assert len(calls) == calls_before + 2
    assert len(list((tmp_path / "precision").glob("bf16-probe-*.json"))) == 7


def test_a_corrupt_or_foreign_cache_file_is_measured_again(counted_probe, tmp_path):
    calls, queue = counted_probe
    shape = probing.Workload(64, 256, 512, training=False)
    queue.append((3.0, 1.0))
    prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    (path,) = (tmp_path / "precision").glob("bf16-probe-*.json")
    good = json.loads(path.read_text())
    for broken in [
        "",
        "{not json",
        "[]",
        json.dumps(dict(good, fp32_s="x")),
        json.dumps(dict(good, bf16_s=0)),
        json.dumps(dict(good, key=dict(good["key"], threads=99))),
    ]:
        path.write_text(broken)
        queue.append((1.0, 2.0))
        assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path).name == "fp32"
        assert json.loads(path.read_text())["speedup"] == 0.5  # re-measured and rewritten
        path.write_text(json.dumps(good))
        assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path).name == "bf16"
    assert len(calls) == 7
    # An unwritable cache only costs another probe next time.
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=blocked).name == "bf16"
    assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=blocked).name == "bf16"
    assert len(calls) == 9


def test_an_unreliable_probe_decides_its_run_but_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    shape = probing.Workload(64, 256, 512, training=True)
    results = iter(
        [
            _probe(shape, 2, 2.0, 1.0, busy_cores=1.4),  # another process took the cores
            _probe(shape, 2, 2.0, 1.0, stable=False),  # repetitions disagreed
            _probe(shape, 2, 1.0, 1.0, busy_cores=0.1),  # fine: cached
        ]
    )
    monkeypatch.setattr(probing, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(probing, "probe", lambda w, threads=None: next(results))
    busy = prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path)
    assert busy.name == "bf16" and "1.4 cores busy: not cached" in busy.reason
    assert "disagreed: not cached" in prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path).reason
    assert not (tmp_path / "precision").exists()
    assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path).name == "fp32"
    assert prec.resolve("auto", "cpu", workload=shape, threads=2, cache_dir=tmp_path).name == "fp32"  # cached
    # Busy cores beyond the ones the run leaves free: a run on 1 of 4 cores tolerates 3 busy ones.
    monkeypatch.setattr(probing, "_usable_cpus", lambda: 4)
    assert not _probe(shape, 1, 1.0, 1.0, busy_cores=3.2).contended
    assert _probe(shape, 4, 1.0, 1.0, busy_cores=0.6).contended


def test_workloads_from_configs_and_their_fitting():
    from transformers import BertConfig, DistilBertConfig

    w = probing.workload_from_config(BertConfig(hidden_size=384, intermediate_size=1536), 1024, training=True)
    assert w == probing.representative(training=True)
    assert probing.workload_from_config(DistilBertConfig(dim=768, hidden_dim=3072), 512, False) == probing.Workload(
        768, 3072, 512, False
    )
    assert w.flops() == 2 * 1024 * (4 * 384 * 384 + 2 * 384 * 1536) * 2  # backward: the input gradient only
    assert w.fitted() == w  # MiniLM's shape is probed as it is
    big = probing.Workload(1024, 4096, 4096, training=True)
    assert big.fitted().rows < 4096 and big.fitted().flops() <= probing.PROBE_MAX_FLOPS
    assert big.fitted().hidden == 1024 and probing.Workload(8192, 32768, 512, True).fitted().rows == 128


def test_the_probe_runs_on_a_tiny_shape():
    """A smoke run of the real probe (not timed against anything: only that it measures both sides,
    on the threads asked for, and leaves torch's thread count as it was)."""
    threads = torch.get_num_threads()
    result = probing.probe(probing.Workload(16, 32, 64, training=True), threads=1, budget_s=0.01)
    assert result.threads == 1 and torch.get_num_threads() == threads
    assert result.fp32_s > 0 and result.bf16_s > 0 and result.repeats >= probing.PROBE_MIN_REPEATS
    assert result.speedup > 0 and result.gflops("fp32") > 0 and "16" in result.describe()
    assert probing.probe(probing.Workload(16, 32, 64, training=False), budget_s=0.01).bf16_s > 0


# --------------------------------------------------------------------------------------------
# FLOPs


def test_flops_hand_count_of_a_tiny_encoder():
    """Two layers, hidden 4, intermediate 8, LoRA r=1 on query and value only, a trainable 4->2 head."""
    q = flops.LinearSite(4, 4, lora_rank=1)
    plain = flops.LinearSite(4, 4)
    layer = flops.LayerShape(
        {
            "query": q,
            "key": plain,
            "value": q,
            "attention_output": plain,
            "intermediate": flops.LinearSite(4, 8),
            "output": flops.LinearSite(8, 4),
        }
    )
    shape = flops.EncoderShape(hidden=4, layers=(layer, layer), head=((4, 2),))
    # Forward per token and layer: 4 linears 4x4 (2*16 each = 128) + 4->8 and 8->4 (64 each = 128)
    # + LoRA r=1 on q and v (2*1*(4+4) = 16 each = 32) = 288; two layers = 576.
    fwd = flops.forward_coefficients(shape)
    assert fwd == flops.Coefficients(576, 2 * 4 * 4, 16)  # attention 4*d per layer per T²; head 2*4*2
    # Backward. Layer 0: its input (embeddings) does not require grad, so base q/k/v pay nothing;
    # LoRA q and v: B weight+input grads 2*2*1*4 = 16, A weight grad 2*4*1 = 8 -> 24 each = 48.
    # Q and V require grad, K does not: scores pay grad-Q only (2d), P·V pays grad-P and grad-V (4d).
    # From attention output on everything requires grad: the 4 remaining linears pay input grads
    # only (32 + 64 + 64 = 160); no weight gradient anywhere (frozen).  Layer 0 = 208 per token.
    # Layer 1: input requires grad: base q/k/v input grads 3*32 = 96, LoRA q/v 2*(24 + 8) = 64,
    # the other three 160 -> 320; attention pays both operands of both products (8d).
    # Head: weight grad 16 + input grad 16.
    bwd = flops.backward_coefficients(shape)
    assert bwd == flops.Coefficients(208 + 320, 6 * 4 + 8 * 4, 32)
    assert flops.training_coefficients(shape).batch(rows=2, width=3) == pytest.approx(
        2 * 3 * (576 + 528) + 2 * 9 * (32 + 56) + 2 * (16 + 32)
    )


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_flops_match_torch_flop_counter(kind, tiny_roberta, tiny_bert):
    """On the real (tiny) models: forward and backward FLOPs equal torch's own count of matmul FLOPs
    (attention in the math SDPA kernel so that its products are visible to the counter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from lorabudget.model.build import build_model

    model_dir = tiny_roberta if kind == "roberta" else tiny_bert
    cases = [
        ("linear", ["query", "value"], None),
        ("full", ["query", "key", "value", "attention_output", "intermediate", "output"], None),
        ("full", ["value"], [1, 2]),  # nothing trains below layer 1: layer 0 has no backward
    ]
    for head, modules, layers in cases:
        cfg = from_dict(
            {
                "model": {"name": str(model_dir)},
                "head": {"type": head, "pooling": "mean"},
                "adapter": {"r": 4, "alpha": 8, "dropout": 0.0, "modules": modules, "layers": layers},
                "budget": {"max_trainable_params": 10**9},
            }
        )
        model = build_model(cfg).model.eval()
        rows, width = 3, 10
        ids = torch.randint(5, 30, (rows, width))
        mask = torch.ones(rows, width, dtype=torch.long)
        shape = flops.encoder_shape(model)
        with sdpa_kernel(SDPBackend.MATH):
            with FlopCounterMode(display=False) as forward:
                logits = model(input_ids=ids, attention_mask=mask).logits
            with FlopCounterMode(display=False) as backward:
                logits.sum().backward()
        assert flops.forward_coefficients(shape).batch(rows, width) == forward.get_total_flops()
        assert flops.backward_coefficients(shape).batch(rows, width) == backward.get_total_flops()
        # merged for inference: no LoRA terms, same base products
        merged = flops.encoder_shape(model.merge_and_unload())
        assert all(s.lora_rank == 0 for layer in merged.layers for s in layer.sites.values())


def test_matmul_peak_is_products_flops_over_the_time_they_took(monkeypatch):
    from types import SimpleNamespace

    clock = iter(0.25 * i for i in range(100))  # each reading a quarter second later
    monkeypatch.setattr(flops, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    products = []
    monkeypatch.setattr(flops.torch, "mm", lambda a, b: products.append(a.shape))
    # Timed from the first reading; it stops at the first reading at or past 1 s: 4 products in 1.0 s.
    assert flops.matmul_peak("fp32", "cpu", size=16, seconds=1.0) == 2 * 16**3 * 4 / 1.0
    assert len(products) == 2 + 4  # two warm-up products, untimed


def test_no_bf16_peak_where_the_cpu_only_emulates_bf16(monkeypatch, tiny_roberta):
    """An emulated bf16 matmul takes minutes at the peak's size: the summary then has no peak (and
    no fraction of it), and the matmul is never run; fp32 and native bf16 are measured."""
    from lorabudget.model.build import build_model

    model = build_model(
        from_dict({"model": {"name": str(tiny_roberta)}, "adapter": {"r": 2, "modules": ["query"]}})
    ).model
    counter = flops.FlopCounter()
    counter.add(4, 16)
    measured = []
    monkeypatch.setattr(flops, "matmul_peak", lambda precision, *a, **k: measured.append(precision) or 1e9)
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ())
    emulated = flops.training_summary(model, counter, 40, [10] * 4, 1.0, "bf16", "cpu")
    assert emulated["train_flops_per_s"] > 0 and emulated["matmul_peak_flops_per_s"] is None
    assert emulated["train_peak_fraction"] is None and measured == []
    assert flops.training_summary(model, counter, 40, [10] * 4, 1.0, "no", "cpu")["matmul_peak_flops_per_s"] == 1e9
    monkeypatch.setattr(hw, "cpu_bf16_flags", lambda: ("avx512_bf16",))
    assert flops.training_summary(model, counter, 40, [10] * 4, 1.0, "bf16", "cpu")["train_peak_fraction"] > 0
    assert measured == ["fp32", "bf16"]


def test_training_summary_reports_flops_and_the_report_shows_them(tiny_config, tmp_path, fresh_accelerate_state):
    """A tiny run with a position cap small enough to split every batch: it trains, and summary.json
    carries the executed and real-token FLOP/s and the matmul peak measured in the run."""
    from lorabudget.report.run_report import write_report
    from lorabudget.training.loop import train

    cfg = from_dict(
        tiny_config(training={"max_steps": 4, "batch_size": 16, "max_batch_positions": 256, "log_every": 1})
    )
    lines = []
    summary = train(cfg, tmp_path / "run", log=lines.append)
    assert sum(line.startswith("training precision: ") for line in lines) == 1
    assert summary["train_flops"] > 0 and summary["matmul_peak_flops_per_s"] > 0
    assert summary["train_real_token_flops_per_s"] < summary["train_flops_per_s"]  # padding is not useful work
    assert summary["train_peak_fraction"] == pytest.approx(
        summary["train_flops_per_s"] / summary["matmul_peak_flops_per_s"]
    )
    report = write_report(tmp_path / "run").read_text()
    trained_in = "bf16" if summary["mixed_precision"] == "bf16" else "fp32"  # auto: bf16 on CPUs with native bf16
    assert "GFLOP/s executed" in report and f"{trained_in} matmul peak" in report


def test_auto_can_be_pinned_for_a_machine(monkeypatch, counted_probe):
    calls, _ = counted_probe
    monkeypatch.setenv("LORABUDGET_AUTO_PRECISION", "bf16")
    assert prec.resolve("auto", "cpu") == prec.Precision("bf16", "auto: LORABUDGET_AUTO_PRECISION=bf16")
    assert prec.resolve("no", "cpu").name == "fp32"  # a forced choice still wins
    monkeypatch.setenv("LORABUDGET_AUTO_PRECISION", "fastest")
    with pytest.raises(LorabudgetError, match="LORABUDGET_AUTO_PRECISION='fastest': use fp32 or bf16"):
        prec.resolve("auto", "cpu")
    assert calls == []  # pinned: nothing measured


def test_a_resumed_auto_run_keeps_the_precision_it_started_in(tiny_config, fresh_accelerate_state, counted_probe):
    from lorabudget.training.setup import make_accelerator

    calls, _ = counted_probe
    lines = []
    auto = from_dict(tiny_config())
    assert make_accelerator(auto, log=lines.append, started_in="bf16").mixed_precision == "bf16"
    assert make_accelerator(auto, log=lines.append, started_in="no").mixed_precision == "no"
    assert lines[-1] == "training precision: fp32 (auto: as this run started, before it was resumed)"
    forced = from_dict(tiny_config(training={"mixed_precision": "no"}))
    assert make_accelerator(forced, log=lines.append, started_in="bf16").mixed_precision == "no"
    assert calls == []  # nothing measured for a resumed run
