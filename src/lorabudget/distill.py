"""Knowledge distillation under the budget, with the teacher run once.

1. The teacher is a finished run directory (any size: it is never counted against the budget) or a
   config that is trained first.
2. One inference pass of the teacher over the student's training texts, validation texts and any
   extra unlabelled texts gives logits that are stored in a cache keyed by the teacher's checkpoint
   and the texts' fingerprint. Every student that trains on the same data reuses them; once the
   cache exists the teacher is not even loaded. A cache for other data or another teacher is never
   used, and a corrupt or truncated one is rebuilt.
3. The student trains on ``(1 - λ)·CE(gold) + λ·T²·KL(teacher_T ‖ student_T)``. Rows from unlabelled
   files have no gold term: only the teacher's soft labels teach them. The teacher's logits are
   looked up by each row's dataset index, so length-grouped shuffling keeps every row paired with
   its own teacher logits.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .batching import default_cache_dir, texts_fingerprint, tokenize
from .config import RunConfig, dump_yaml, load_config
from .data import TextData, load_unlabelled
from .errors import LorabudgetError
from .io import atomic_path
from .metrics import classification_metrics
from .train import plan_or_refuse, prepare_data, train

CACHE_VERSION = "1"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    weight: float,
) -> torch.Tensor:
    """``(1 - weight)·CE + weight·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    ``student_logits``, ``teacher_logits`` [B, C]; ``labels`` [B] with -1 for rows without a gold
    label. CE is the mean over labelled rows (0 when none), KL the mean over all rows. With
    ``weight`` 0 the loss is plain cross-entropy and every row must be labelled.
    """
    student_logits = student_logits.float()
    if weight == 0:
        # Exactly plain training: the same call as lorabudget.train.cross_entropy_loss.
        return F.cross_entropy(student_logits, labels)
    # Mean CE over labelled rows, written without data-dependent branches (no host sync per step).
    labelled = (labels >= 0).to(student_logits.dtype)
    ce_rows = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
    ce = (ce_rows * labelled).sum() / labelled.sum().clamp(min=1.0)
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return (1 - weight) * ce + weight * t * t * kl


# --------------------------------------------------------------------------------------------
# Teacher logits, computed once and cached


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_fingerprint(teacher_dir: Path) -> str:
    """Identity of a trained teacher: its config and adapter weights (no model is loaded)."""
    teacher_dir = Path(teacher_dir)
    parts = [CACHE_VERSION, (teacher_dir / "config.yaml").read_text(encoding="utf-8")]
    adapter = teacher_dir / "adapter"
    files = sorted(p for p in adapter.glob("*") if p.suffix in (".safetensors", ".bin", ".json") and p.name != "README.md")
    if not files:
        raise LorabudgetError(f"teacher run {teacher_dir} has no trained adapter; train it first")
    parts += [f"{p.name}:{file_sha256(p)}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class TeacherLogitsCache:
    """Teacher logits on disk: ``<cache>/teacher_logits/<teacher>-<texts>.npz``.

    The file stores the full key and the row count; anything that does not match, or does not
    read back whole, is treated as absent.
    """

    def __init__(self, cache_dir: Path):
        self.folder = Path(cache_dir) / "teacher_logits"

    @staticmethod
    def key(teacher_fp: str, texts: Sequence[str]) -> str:
        return f"{teacher_fp[:24]}-{texts_fingerprint(texts)[:24]}"

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npz"

    def load(self, key: str, rows: int) -> Optional[np.ndarray]:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path) as data:
                logits = data["logits"]
                stored_key = str(data["key"])
        except Exception:  # noqa: BLE001 - truncated or corrupt file: rebuild
            return None
        if stored_key != key or logits.shape[0] != rows or not np.isfinite(logits).all():
            return None
        return logits

    def save(self, key: str, logits: np.ndarray) -> Path:
        path = self.path(key)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, logits=logits.astype(np.float32), key=np.array(key))
        return path


def teacher_logits(
    teacher_dir: Path,
    texts: Sequence[str],
    cache: TeacherLogitsCache,
    log: Callable[[str], None] = print,
    what: str = "texts",
) -> np.ndarray:
    """Logits [len(texts), C] of the teacher, from the cache or from one inference pass."""
    from .runs import load_run

    key = cache.key(teacher_fingerprint(teacher_dir), texts)
    cached = cache.load(key, len(texts))
    if cached is not None:
        log(f"teacher logits for {len(texts):,} {what}: from cache {cache.path(key)}")
        return cached
    if cache.path(key).exists():
        log(f"teacher logits cache {cache.path(key)} is unreadable or does not match: rebuilding it")
    run = load_run(Path(teacher_dir))
    logits = run.logits(texts, progress=f"teacher on {what}")
    del run
    path = cache.save(key, logits)
    log(f"teacher logits for {len(texts):,} {what}: computed once, cached at {path}")
    return logits


# --------------------------------------------------------------------------------------------
# The distill command


def resolve_teacher(teacher: str, student: RunConfig, student_run: Path, log: Callable[[str], None]) -> Path:
    """A finished run directory, or a config trained first into ``<runs>/<teacher name>``.

    A teacher trained here gets the student's data settings, so it trains on exactly the student's
    training rows and never sees the student's validation rows.
    """
    path = Path(teacher)
    if path.is_dir():
        if not (path / "config.yaml").is_file() or not (path / "adapter" / "adapter_config.json").is_file():
            raise LorabudgetError(f"teacher {teacher} is not a finished lorabudget run directory")
        return path
    cfg = replace(load_config(teacher), data=student.data)
    target = student_run.parent / cfg.name
    if target.resolve() == student_run.resolve():
        raise LorabudgetError(f"the teacher config and the student are both named '{cfg.name}'; rename one")
    if target.exists():
        if (target / "summary.json").is_file() and (target / "config.yaml").read_text(encoding="utf-8") == dump_yaml(cfg):
            log(f"teacher: reusing the trained run {target}")
            return target
        raise LorabudgetError(
            f"{target} exists but is not a finished run of teacher config '{teacher}' on this data; "
            f"remove it, or pass a finished teacher run directory with --teacher"
        )
    log(f"teacher: training config '{teacher}' into {target} (the teacher is not counted against the budget)")
    train(cfg, target, log=log)
    return target


def distill(
    cfg: RunConfig,
    run_dir: Path,
    teacher: Optional[str] = None,
    unlabelled: Sequence[str] = (),
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the student ``cfg`` with knowledge distillation; returns its summary.

    ``resume``: continue the student from its last checkpoint (the teacher's logits come from the cache).
    """
    d = cfg.distill
    teacher = teacher or d.teacher
    if not teacher:
        raise LorabudgetError("distillation needs a teacher: --teacher RUN_DIR|CONFIG or distill.teacher in the config")
    unlabelled = list(unlabelled) or list(d.unlabelled)
    if unlabelled and d.alpha == 0:
        raise LorabudgetError("distill.alpha is 0: unlabelled texts would teach nothing; raise distill.alpha or drop them")
    plan_or_refuse(cfg, log)  # the student is counted and guarded before anything else runs
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher_dir = resolve_teacher(teacher, cfg, run_dir, log)

    data = prepare_data(cfg, log)
    extra = [load_unlabelled(path, trust_pickle=cfg.data.trust_pickle) for path in unlabelled]
    extra_texts = [t for e in extra for t in e.texts if t]
    if extra_texts:
        log(f"distill: adding {len(extra_texts):,} unlabelled texts taught by the teacher's soft labels only")
    train_texts = data.train.texts + extra_texts
    cache = TeacherLogitsCache(default_cache_dir(cfg.data.cache_dir))
    train_logits = teacher_logits(teacher_dir, train_texts, cache, log, "training texts")
    val_logits = teacher_logits(teacher_dir, data.validation.texts, cache, log, "validation texts")
    teacher_val = classification_metrics(val_logits, data.validation.labels, cfg.model.labels)
    log(f"teacher validation accuracy {teacher_val['accuracy']:.4f} (macro F1 {teacher_val['macro_f1']:.4f}) "
        f"on the student's {len(data.validation):,} validation rows")

    if extra_texts:
        labels = np.concatenate([data.train.labels, np.full(len(extra_texts), -1, dtype=np.int64)])
        merged = TextData(train_texts, labels, np.arange(len(train_texts), dtype=np.int64), data.train.source)
        extra_tokens = tokenize(data.tokenizer, extra_texts, cfg.model.max_length, default_cache_dir(cfg.data.cache_dir))
        data = replace(data, train=merged, train_tokens=data.train_tokens.concat(extra_tokens))

    # The whole table moves to the training device once (first step), so looking rows up by their
    # dataset index needs no host round trip per step.
    table = {"logits": torch.from_numpy(train_logits)}

    def loss_fn(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if table["logits"].device != logits.device:
            table["logits"] = table["logits"].to(logits.device)
        teacher_batch = table["logits"][batch["index"].to(logits.device)]
        return kd_loss(logits, teacher_batch, batch["labels"], d.temperature, d.alpha)

    extra_summary = {
        "method": f"distill (T={d.temperature:g}, λ={d.alpha:g})",
        "teacher": str(teacher_dir),
        "teacher_validation_accuracy": teacher_val["accuracy"],
        "distill_temperature": d.temperature,
        "distill_alpha": d.alpha,
        "unlabelled_rows": len(extra_texts),
    }
    summary = train(cfg, run_dir, loss_fn=loss_fn, data=data, log=log, extra_summary=extra_summary, resume=resume)
    log(
        f"distillation: teacher {teacher_val['accuracy']:.4f} -> student {summary['validation_accuracy']:.4f} "
        f"validation accuracy with {summary['trainable_params']:,} trainable parameters"
    )
    return summary
