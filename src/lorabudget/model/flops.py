"""Matmul FLOPs of BERT-family encoders with adapters, and this machine's measured matmul peak.

Conventions (say what is counted, so achieved GFLOP/s can be compared with a matmul peak):

* One multiply-add is 2 FLOPs. Only matrix products are counted: the six linear layers of each
  encoder layer (query, key, value, attention output, intermediate, output), LoRA's two factors on
  adapted layers (``2·r·(in + out)`` per token), the two attention products (scores ``Q·Kᵀ`` and
  ``P·V``: ``2·T·d`` each per token at padded width ``T``, hidden size ``d``, all heads together),
  and the head's linear layers (once per row: BERT's pooler, RoBERTa's dense + out_proj, or the
  linear head, on the pooled vector). Embedding look-ups, layer norms, softmax, GELU, dropout,
  residual adds and LoRA's scaling are elementwise and left out (a few percent of the time on a
  CPU, none of the FLOPs a matmul peak measures).
* Backward, exactly, from what autograd computes rather than the usual "backward = 2x forward":
  a product ``y = x·W`` costs one forward-sized product for the input gradient if and only if ``x``
  requires grad, and one for the weight gradient if and only if ``W`` is trainable. LoRA with a
  frozen base therefore has no weight gradient for any frozen weight; its base products still pay
  the input gradient wherever something below them trains (so the adapted encoder costs about 2x
  forward, not 3x), and nothing is paid below the lowest trainable parameter (in layer 0 of an
  adapter-on-every-layer model the frozen query/key/value products get no backward at all, since
  the embeddings do not require grad). LoRA factors: ``B`` pays its weight and input gradients,
  ``A`` its weight gradient and its input gradient only where its input requires grad. Attention
  products pay one gradient per operand that requires grad. Trainable parameters without products of
  their own (BitFit's biases, (IA)3's and VeRA's vectors, DoRA's magnitudes) make their layer's output
  require grad, so everything above them pays input gradients; (IA)3 on a feed-forward layer scales
  that layer's input and pays its input-gradient product too. VeRA's and FourierFT's own adapter
  products (a frozen random projection, an inverse FFT) are not counted.
* Totals are linear in three counts, so a training loop needs only running sums: padded token
  positions ``Σ B·T``, ``Σ B·T²`` (attention), and rows ``Σ B``. "Real-token" FLOPs use each row's
  own length instead of the padded width: the useful work, as opposed to the work executed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch

SITES = ("query", "key", "value", "attention_output", "intermediate", "output")


@dataclass(frozen=True)
class LinearSite:
    n_in: int
    n_out: int
    weight_trainable: bool = False
    lora_rank: int = 0  # 0: no LoRA adapter on this linear layer
    # Another trainable parameter on this layer (a bias for BitFit, (IA)3's scales, DoRA's magnitudes,
    # VeRA's scaling vectors): no product of its own, but the layer's output then requires grad, so
    # everything above pays its input gradients.
    adapter_trainable: bool = False
    # (IA)3 on a feed-forward layer scales the layer's *input*: its gradient needs the gradient of the
    # scaled input, one forward-sized product, even where nothing below trains.
    input_scaled: bool = False


@dataclass(frozen=True)
class LayerShape:
    sites: dict[str, LinearSite]  # by short name (SITES)
    norms_trainable: bool = False  # a trainable LayerNorm makes its output require grad


@dataclass(frozen=True)
class EncoderShape:
    hidden: int
    layers: tuple[LayerShape, ...]
    embeddings_trainable: bool = False
    head: tuple[tuple[int, int], ...] = ()  # (in, out) of each head linear layer, applied once per row
    head_trainable: bool = True


@dataclass(frozen=True)
class Coefficients:
    """FLOPs = per_position·ΣB·T + per_position_sq·ΣB·T² + per_row·ΣB."""

    per_position: float
    per_position_sq: float
    per_row: float

    def total(self, positions: float, positions_sq: float, rows: float) -> float:
        return self.per_position * positions + self.per_position_sq * positions_sq + self.per_row * rows

    def batch(self, rows: int, width: int) -> float:
        return self.total(rows * width, rows * width * width, rows)

    def __add__(self, other: "Coefficients") -> "Coefficients":
        return Coefficients(
            self.per_position + other.per_position,
            self.per_position_sq + other.per_position_sq,
            self.per_row + other.per_row,
        )


def forward_coefficients(shape: EncoderShape) -> Coefficients:
    per_position = 0.0
    for layer in shape.layers:
        for s in layer.sites.values():
            per_position += 2 * s.n_in * s.n_out + 2 * s.lora_rank * (s.n_in + s.n_out)
    per_position_sq = len(shape.layers) * 4 * shape.hidden  # Q·Kᵀ and P·V, 2·T·d each per token
    per_row = sum(2 * i * o for i, o in shape.head)
    return Coefficients(per_position, per_position_sq, per_row)


def _site_backward(s: LinearSite, input_rg: bool) -> tuple[float, bool]:
    """Per-token backward FLOPs of one (adapted) linear layer, and whether its output requires grad."""
    base = 2 * s.n_in * s.n_out
    flops = (base if input_rg or s.input_scaled else 0) + (base if s.weight_trainable else 0)
    if s.lora_rank:
        r = s.lora_rank
        flops += 2 * 2 * r * s.n_out  # B: weight gradient + input gradient (A's output requires grad)
        flops += 2 * s.n_in * r  # A: weight gradient
        flops += 2 * s.n_in * r if input_rg else 0  # A: input gradient
    return flops, input_rg or s.weight_trainable or s.lora_rank > 0 or s.adapter_trainable


def _layer_backward(layer: LayerShape, d: int, rg: bool) -> tuple[Coefficients, bool]:
    """One encoder layer's backward coefficients given whether its input requires grad, and whether
    its output does."""
    per_position = per_position_sq = 0.0
    sites = layer.sites
    out_rg = {}
    for name in ("query", "key", "value"):
        f, out_rg[name] = _site_backward(sites[name], rg)
        per_position += f
    q, k, v = out_rg["query"], out_rg["key"], out_rg["value"]
    p = q or k
    # scores = Q·Kᵀ: one product per operand that requires grad; ctx = P·V likewise.
    per_position_sq += 2 * d * (int(q) + int(k)) + 2 * d * (int(p) + int(v))
    ctx = p or v
    f, ao = _site_backward(sites["attention_output"], ctx)
    per_position += f
    h1 = ao or rg or layer.norms_trainable
    f, inter = _site_backward(sites["intermediate"], h1)
    per_position += f
    f, out = _site_backward(sites["output"], inter)
    per_position += f
    return Coefficients(per_position, per_position_sq, 0.0), out or h1 or layer.norms_trainable


def layer_coefficients(shape: EncoderShape) -> list[tuple[Coefficients, Coefficients]]:
    """(forward, backward) coefficients of each encoder layer, bottom to top (the head left out:
    :func:`head_coefficients`). A layer below every trainable parameter has a zero backward."""
    out = []
    rg = shape.embeddings_trainable  # does the current hidden state require grad?
    for layer in shape.layers:
        single = EncoderShape(shape.hidden, (layer,))
        backward, rg = _layer_backward(layer, shape.hidden, rg)
        out.append((forward_coefficients(single), backward))
    return out


def _top_requires_grad(shape: EncoderShape) -> bool:
    rg = shape.embeddings_trainable
    for layer in shape.layers:
        rg = _layer_backward(layer, shape.hidden, rg)[1]
    return rg


def head_coefficients(shape: EncoderShape) -> tuple[Coefficients, Coefficients]:
    """(forward, backward) coefficients of the head's linear layers: per row only."""
    rg = _top_requires_grad(shape)
    forward = backward = 0.0
    for i, o in shape.head:
        forward += 2 * i * o
        backward += (2 * i * o if shape.head_trainable else 0) + (2 * i * o if rg else 0)
        rg = rg or shape.head_trainable
    return Coefficients(0.0, 0.0, forward), Coefficients(0.0, 0.0, backward)


def backward_coefficients(shape: EncoderShape) -> Coefficients:
    total = head_coefficients(shape)[1]
    for _, backward in layer_coefficients(shape):
        total = total + backward
    return total


def training_coefficients(shape: EncoderShape) -> Coefficients:
    return forward_coefficients(shape) + backward_coefficients(shape)


# --------------------------------------------------------------------------------------------
# From a live (or meta-device) model


def encoder_shape(model: torch.nn.Module) -> EncoderShape:
    """The shape of an encoder as built by lorabudget (PEFT-wrapped or merged), for the families whose
    six linear modules are separate and whose layers are not shared (not ModernBERT, not ALBERT)."""
    from torch import nn

    from lorabudget.errors import LorabudgetError
    from lorabudget.model.layout import encoder_layers, layer_sharing, model_family

    layer_names = encoder_layers(model)
    family = model_family(model)
    if family is None or family.fused_groups() or layer_sharing(model):
        raise LorabudgetError("FLOPs are counted for encoders with six separate linear modules and unshared layers")
    modules = dict(model.named_modules())

    def trainable(module: nn.Module) -> bool:
        return any(p.requires_grad for p in module.parameters())

    layers = []
    for layer_name in layer_names:
        sites = {}
        for short, path in family.linear.items():
            module = modules[f"{layer_name}.{path}"]
            base = getattr(module, "base_layer", module)  # PEFT tuner layers wrap the original Linear
            rank = 0
            lora_a = getattr(module, "lora_A", None)
            if lora_a is not None and not getattr(module, "merged", False):
                active = getattr(module, "active_adapters", list(lora_a.keys()))
                rank = sum(lora_a[a].out_features for a in active if a in lora_a)
            extra = any(
                p.requires_grad and name not in ("weight", "base_layer.weight") and not name.startswith("lora_")
                for name, p in module.named_parameters()
            )
            scaled = bool(getattr(module, "is_feedforward", False)) and hasattr(module, "ia3_l")
            sites[short] = LinearSite(
                base.in_features, base.out_features, base.weight.requires_grad, rank, extra, scaled and extra
            )
        layer = modules[layer_name]
        norms = any(trainable(m) for m in layer.modules() if isinstance(m, nn.LayerNorm))
        layers.append(LayerShape(sites, norms))
    embeddings = [m for n, m in modules.items() if n.endswith("embeddings") and n.count("embeddings") == 1]
    head, head_trainable = [], False
    for name, module in modules.items():
        if not isinstance(module, nn.Linear) or "original_module" in name or ".lora_" in name:
            continue
        if any(name.startswith(layer_name + ".") for layer_name in layer_names):
            continue
        head.append((module.in_features, module.out_features))
        head_trainable = head_trainable or trainable(module)
    hidden = layers[0].sites["query"].n_in if layers else 0
    return EncoderShape(hidden, tuple(layers), any(trainable(m) for m in embeddings[:1]), tuple(head), head_trainable)


# --------------------------------------------------------------------------------------------
# The machine's matmul peak


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_precision(precision: str, device: Any = "cpu") -> bool:
    """Whether ``device`` multiplies in ``precision`` natively. A CPU without bf16 instructions
    emulates it: one 2048² bf16 matmul took 35 to 80 s on the 2-core AMD EPYC of 2026-12-01 (fp32:
    0.3 s), so a bf16 peak there costs minutes and means nothing."""
    from lorabudget.model.cpu import cpu_supports_bf16

    return precision != "bf16" or torch.device(device).type != "cpu" or cpu_supports_bf16()


def matmul_peak(
    precision: str = "fp32", device: Any = "cpu", size: Optional[int] = None, seconds: float = 0.5
) -> float:
    """Measured FLOP/s of a square matmul loop (2048² on a CPU, 8192² on a GPU) in ``precision``."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 2048)
    dtype = DTYPES[precision]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: kernel selection, packing buffers, clocks
        torch.mm(a, b)
    sync()
    count, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        count += 1
        if count % 4 == 0 or device.type != "cuda":
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
    return 2.0 * n**3 * count / elapsed


@dataclass
class FlopCounter:
    """Running sums a loop keeps to turn its work into FLOPs (see the module docstring)."""

    positions: int = 0
    positions_sq: int = 0
    rows: int = 0

    def add(self, rows: int, width: int) -> None:
        self.rows += rows
        self.positions += rows * width
        self.positions_sq += rows * width * width


def training_summary(
    model: torch.nn.Module,
    counter: FlopCounter,
    real_tokens: int,
    row_lengths: Any,
    seconds: float,
    precision: str,
    device: Any,
    processes: int = 1,
    peak_seconds: float = 0.5,
    cached_layers: int = 0,
) -> dict[str, Any]:
    """Fields for summary.json: achieved training FLOP/s, executed (padded positions) and on real
    tokens, the matmul peak measured now in the training precision, and the fraction of it.
    ``cached_layers``: the steps ran the layers from this one up (the frozen-prefix cache).

    ``counter`` holds one process's batches (every process runs as many); ``real_tokens`` is the
    real tokens of all processes; the attention term of real-token FLOPs uses the token-weighted
    mean length of the training rows ``row_lengths`` (Σ L² / Σ L: exact over whole epochs).
    Empty when the model is not a BERT-family encoder this module can read."""
    import numpy as np

    from lorabudget.errors import LorabudgetError

    try:
        shape = encoder_shape(model)
        coef = training_coefficients(replace(shape, layers=shape.layers[cached_layers:]))
    except (LorabudgetError, KeyError, AttributeError):
        return {}
    lengths = np.asarray(row_lengths, dtype=np.float64)
    mean_sq = float((lengths**2).sum() / lengths.sum()) if lengths.sum() else 0.0
    executed = coef.total(counter.positions, counter.positions_sq, counter.rows) * processes
    useful = coef.total(real_tokens, real_tokens * mean_sq, counter.rows * processes)
    kind = "fp32" if precision in ("no", "fp32") else precision
    peak = matmul_peak(kind, device, seconds=peak_seconds) if native_precision(kind, device) else None
    rate = executed / seconds if seconds > 0 else None
    return {
        "train_flops": executed,
        "train_flops_per_s": rate,
        "train_real_token_flops_per_s": useful / seconds if seconds > 0 else None,
        "matmul_peak_flops_per_s": peak,
        "train_peak_fraction": rate / peak if rate and peak else None,
    }
