"""Knowledge distillation under the budget, with the teacher run once.

1. The teacher is a finished run directory (any size and any adapter method or a full fine-tune: it
   is never counted against the budget), a config that is trained first, or an **ensemble** of
   several (their class probabilities are averaged).
2. One inference pass of the teacher over the student's training texts, validation texts and any
   extra unlabelled texts gives logits that are stored in a cache keyed by the teacher's checkpoint
   (every member's, for an ensemble) and the texts' fingerprint. Every student that trains on the
   same data reuses them; once the cache exists the teacher is not even loaded. A cache for other
   data or another teacher is never used, and a corrupt or truncated one is rebuilt.
3. The student trains on ``(1 - λ)·CE(gold) + λ·T²·KL(teacher_T ‖ student_T)`` (a multi-label
   run: binary cross-entropy per class for both terms, :mod:`lorabudget.training.distill_multilabel`). Rows without a gold
   label (from unlabelled files, or the share of the labelled file used as transfer texts) have no
   CE term: only the teacher's soft labels teach them, and those the teacher is unsure of can be
   dropped. The teacher's logits are looked up by each row's dataset index, so length-grouped
   shuffling keeps every row paired with its own teacher logits.

Nothing here depends on the adapter method: the student trains through the ordinary training loop
with a different loss.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from lorabudget.config import RunConfig, load_config
from lorabudget.data.batching import (
    TokenizedTexts,
    content_sha256,
    pairs_fingerprint,
    texts_fingerprint,
    tokenize,
)
from lorabudget.data.cache import TEACHER_LOGITS_FOLDER
from lorabudget.data.load import Columns, TextData, load_unlabelled
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_path, default_cache_dir
from lorabudget.metrics import softmax
from lorabudget.rundir.layout import RunDir, file_sha256
from lorabudget.training.distill_multilabel import (
    check_teachers,
    confident_rows,
    ensemble_logits_multilabel,
    kd_loss_multilabel,
    teacher_validation,
)
from lorabudget.training.loop import train
from lorabudget.training.setup import PreparedData, class_weights_for, plan_or_refuse, prepare_data

CACHE_VERSION = "2"


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    weight: float,
    class_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(1 - weight)·CE + weight·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    ``student_logits``, ``teacher_logits`` [B, C]; ``labels`` [B] with -1 for rows without a gold
    label. CE is the mean over labelled rows (0 when none), KL the mean over all rows. With
    ``weight`` 0 the loss is plain cross-entropy and every row must be labelled. ``class_weights``
    [C] (``training.class_weights``) weight each labelled row's CE by its gold class.
    """
    student_logits = student_logits.float()
    if class_weights is not None:
        labelled = (labels >= 0).to(student_logits.dtype) * class_weights[labels.clamp(min=0)]
        ce_rows = F.cross_entropy(student_logits, labels.clamp(min=0), reduction="none")
        ce = (ce_rows * labelled).sum() / (labels >= 0).sum().clamp(min=1)
        if weight == 0:
            return ce
    elif weight == 0:
        # Exactly plain training: the same call as lorabudget.training.loop.cross_entropy_loss.
        return F.cross_entropy(student_logits, labels)
    else:
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


def teacher_fingerprint(teacher_dir: Path) -> str:
    """Identity of a trained teacher: its config and trained weights (no model is loaded)."""
    teacher_dir = Path(teacher_dir)
    run = RunDir(teacher_dir)
    parts = [CACHE_VERSION, run.config_path.read_text(encoding="utf-8")]
    files = run.trained_files()
    if not files:
        raise LorabudgetError(f"teacher run {teacher_dir} has no trained weights; train it first")
    parts += [f"{p.relative_to(teacher_dir).as_posix()}:{file_sha256(p)}" for p in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ensemble_fingerprint(teacher_dirs: Sequence[Path]) -> str:
    """One teacher's fingerprint, or for an ensemble one made of every member's (order-free)."""
    fps = sorted(teacher_fingerprint(d) for d in teacher_dirs)
    if len(fps) == 1:
        return fps[0]
    return hashlib.sha256(("ensemble\n" + "\n".join(fps)).encode()).hexdigest()


def ensemble_logits(member_logits: Sequence[np.ndarray], multi_label: bool = False) -> np.ndarray:
    """Logits whose softmax is the mean of the members' class probabilities (log of the mean); for
    multi-label members, whose sigmoid is the mean of their per-class probabilities."""
    if multi_label:
        return ensemble_logits_multilabel(member_logits)
    probs = np.mean([softmax(m) for m in member_logits], axis=0)
    return np.log(np.clip(probs, 1e-30, None)).astype(np.float32)


class TeacherLogitsCache:
    """Teacher logits on disk: ``<cache>/teacher_logits/<teacher>-<texts>.npz``.

    The file stores the full key and the row count; anything that does not match, or does not
    read back whole, is treated as absent.
    """

    def __init__(self, cache_dir: Path):
        self.folder = Path(cache_dir) / TEACHER_LOGITS_FOLDER

    @staticmethod
    def key(teacher_fp: str, texts: Sequence[str], pairs: Optional[Sequence[str]] = None) -> str:
        """Teacher and texts; for sentence pairs the second texts too (single texts keep their old keys)."""
        key = f"{teacher_fp[:24]}-{texts_fingerprint(texts)[:24]}"
        return key if pairs is None else f"{key}-{pairs_fingerprint(pairs)[5:29]}"

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
                stored_sum = str(data["checksum"]) if "checksum" in data.files else None
        except Exception:  # noqa: BLE001 - truncated or corrupt file: rebuild
            return None
        if stored_sum != content_sha256(logits):  # rewritten (another shape, other values): rebuild
            return None
        if stored_key != key or logits.ndim != 2 or logits.shape[0] != rows or not np.isfinite(logits).all():
            return None
        return logits

    def save(self, key: str, logits: np.ndarray) -> Path:
        path = self.path(key)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                logits = logits.astype(np.float32)
                np.savez(fh, logits=logits, key=np.array(key), checksum=np.array(content_sha256(logits)))
        return path


def teacher_logits(
    teacher_dir: Union[Path, Sequence[Path]],
    texts: Sequence[str],
    cache: TeacherLogitsCache,
    log: Callable[[str], None] = print,
    what: str = "texts",
    pairs: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """Logits [len(texts), C] of the teacher (or ensemble of teachers), from the cache or computed once.
    ``pairs``: the second texts of sentence pairs (tokenized as pairs, part of the cache key).

    An ensemble's logits are cached under a key made of all its members, so a change to any member
    gives a new key; each member's own logits are cached too (reused by single-teacher students).
    """
    from lorabudget.inference.runs import load_run

    members = [Path(teacher_dir)] if isinstance(teacher_dir, (str, Path)) else [Path(d) for d in teacher_dir]
    if not members:
        raise LorabudgetError("distillation needs at least one teacher")
    key = cache.key(ensemble_fingerprint(members), texts, pairs)
    cached = cache.load(key, len(texts))
    if cached is not None:
        log(f"teacher logits for {len(texts):,} {what}: from cache {cache.path(key)}")
        return cached
    if cache.path(key).exists():
        log(f"teacher logits cache {cache.path(key)} is unreadable or does not match: rebuilding it")
    if len(members) > 1:
        ordered = sorted(members, key=teacher_fingerprint)  # the same mean, bit for bit, in any order given
        logits = ensemble_logits(
            [teacher_logits(m, texts, cache, log, f"{what}, member {m.name}", pairs) for m in ordered],
            multi_label=RunDir(ordered[0]).read_config().model.problem_type == "multi_label",
        )
        path = cache.save(key, logits)
        log(
            f"teacher logits for {len(texts):,} {what}: ensemble of {len(members)} teachers "
            f"(probabilities averaged), cached at {path}"
        )
        return logits
    run = load_run(members[0])
    logits = run.logits(texts, progress=f"teacher on {what}", pairs=pairs)
    del run
    path = cache.save(key, logits)
    log(f"teacher logits for {len(texts):,} {what}: computed once, cached at {path}")
    return logits


# --------------------------------------------------------------------------------------------
# Transfer texts: part of the labelled file used without its labels


def transfer_indices(n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted positions of ``round(fraction · n)`` training rows chosen by a seeded permutation."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = int(round(fraction * n))
    if not 0 < k < n:
        raise LorabudgetError(
            f"distill.transfer_fraction={fraction:g} of {n:,} training rows leaves no transfer or no labelled rows"
        )
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def take_tokens(tokens: TokenizedTexts, index: Sequence[int]) -> TokenizedTexts:
    """The rows ``index`` of ``tokens``, in that order."""
    index = np.asarray(index, dtype=np.int64)
    lengths = tokens.lengths[index]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate([tokens.row(i) for i in index]) if len(index) else np.zeros(0, dtype=tokens.ids.dtype)
    type_ids = None if tokens.type_ids is None else np.concatenate([tokens.type_row(i) for i in index])
    return TokenizedTexts(ids.astype(tokens.ids.dtype), offsets, type_ids)


def without_transfer_rows(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """The prepared data with the transfer rows removed from training: what a baseline or a teacher
    that may only see the labels the student sees trains on."""
    drop = transfer_indices(len(data.train), fraction, seed)
    keep = np.setdiff1d(np.arange(len(data.train)), drop)
    return replace(data, train=data.train.subset(keep), train_tokens=take_tokens(data.train_tokens, keep))


# --------------------------------------------------------------------------------------------
# The distill command


def resolve_teacher(
    teacher: str,
    student: RunConfig,
    student_run: Path,
    log: Callable[[str], None],
    transfer_fraction: float = 0.0,
    overrides: Sequence[str] = (),
) -> Path:
    """A finished run directory, or a config trained first into ``<runs>/<teacher name>``.

    A teacher trained here gets the student's data settings, so it trains on exactly the student's
    training rows and never sees the student's validation rows. With transfer texts it trains on the
    rows that keep their labels only (into ``<teacher name>-without-transfer-<fraction>``), so it has
    no label the student lacks. ``overrides`` (``key=value``) apply to a teacher config.
    """
    path = Path(teacher)
    if path.is_dir():
        if not (RunDir(path).is_run() and RunDir(path).finished()):
            raise LorabudgetError(f"teacher {teacher} is not a finished lorabudget run directory")
        return path
    cfg = replace(load_config(teacher, list(overrides)), data=student.data)
    # The student's classes (inferred from its data when it named none), so teacher and student agree.
    cfg.model = replace(
        cfg.model,
        labels=student.class_names,
        label_format=student.model.label_format,
        problem_type=student.model.problem_type,
    )
    seed = cfg.data.split_seed
    marker = {"fraction": transfer_fraction, "seed": seed} if transfer_fraction else None
    target = student_run.parent / (cfg.name + (f"-without-transfer-{transfer_fraction:g}" if marker else ""))
    if target.resolve() == student_run.resolve():
        raise LorabudgetError(f"the teacher config and the student are both named '{target.name}'; rename one")
    if target.exists():
        done = RunDir(target)
        if (
            done.finished()
            and done.saved_config_values() == cfg.to_dict()
            and done.read_summary().get("transfer_rows_excluded") == marker
        ):
            log(f"teacher: reusing the trained run {target}")
            return target
        raise LorabudgetError(
            f"{target} exists but is not a finished run of teacher config '{teacher}' on this data; "
            f"remove it, or pass a finished teacher run directory with --teacher"
        )
    log(f"teacher: training config '{teacher}' into {target} (the teacher is not counted against the budget)")
    data = None
    if marker:
        data = without_transfer_rows(prepare_data(cfg, log), transfer_fraction, seed)
        log(f"teacher: trains on the {len(data.train):,} rows that keep their labels (transfer rows excluded)")
    train(cfg, target, data=data, log=log, extra_summary={"transfer_rows_excluded": marker})
    return target


def _teacher_list(teacher: Union[None, str, Sequence[str]]) -> list[str]:
    if not teacher:
        return []
    return [teacher] if isinstance(teacher, str) else list(teacher)


@dataclass
class StudentRows:
    """The student's training rows: the labelled ones (a share of them as transfer texts, label -1)
    and the unlabelled texts (label -1), with their tokens."""

    texts: list[str]
    pairs: Optional[list]
    labels: np.ndarray
    tokens: TokenizedTexts
    is_transfer: np.ndarray  # bool per row

    def take(self, index: np.ndarray) -> "StudentRows":
        return StudentRows(
            [self.texts[i] for i in index],
            [self.pairs[i] for i in index] if self.pairs is not None else None,
            self.labels[index],
            take_tokens(self.tokens, index),
            self.is_transfer[index],
        )


def distill_inputs(
    cfg: RunConfig,
    teacher: Union[None, str, Sequence[str]],
    unlabelled: Sequence[str],
    transfer_fraction: Optional[float],
) -> tuple[list[str], float, list[str]]:
    """(teachers, transfer fraction, unlabelled files), the arguments over the config's ``distill``
    section, refused with one line where they cannot work together."""
    d = cfg.distill
    if cfg.data.train_on_validation:  # the teacher and the transfer rows must never see the validation rows
        raise LorabudgetError(
            "distillation keeps the validation rows out of the teacher and the transfer rows: "
            "drop data.train_on_validation"
        )
    teachers = _teacher_list(teacher) or _teacher_list(d.teacher)
    if not teachers:
        raise LorabudgetError("distillation needs a teacher: --teacher RUN_DIR|CONFIG or distill.teacher in the config")
    if len(set(teachers)) != len(teachers):
        raise LorabudgetError("a teacher is listed twice; an ensemble needs distinct members")
    fraction = d.transfer_fraction if transfer_fraction is None else transfer_fraction
    if not 0 <= fraction < 1:
        raise LorabudgetError(f"--transfer-from-train-fraction must be in [0, 1), got {fraction:g}")
    unlabelled = list(unlabelled) or list(d.unlabelled)
    if (unlabelled or fraction) and d.alpha == 0:
        what = "unlabelled texts" if unlabelled else "transfer texts"
        raise LorabudgetError(f"distill.alpha is 0: {what} would teach nothing; raise distill.alpha or drop them")
    return teachers, fraction, unlabelled


def student_rows(
    cfg: RunConfig, data: PreparedData, fraction: float, unlabelled: list[str], log: Callable[[str], None]
) -> StudentRows:
    """The labelled rows (the transfer share without labels) and the unlabelled files' texts."""
    labels = data.train.labels.copy()
    transfer = transfer_indices(len(data.train), fraction, cfg.data.split_seed)
    if len(transfer):
        labels[transfer] = -1
        log(
            f"distill: {len(transfer):,} of {len(labels):,} labelled training rows ({fraction:.0%}, seed "
            f"{cfg.data.split_seed}) used as transfer texts, without their labels"
        )
    columns = Columns.of(cfg)
    extra = [load_unlabelled(path, trust_pickle=cfg.data.trust_pickle, columns=columns) for path in unlabelled]
    pair_mode = data.train.pairs is not None
    kept = [(t, e.pairs[i] if pair_mode else None) for e in extra for i, t in enumerate(e.texts) if t]
    extra_texts = [t for t, _ in kept]
    extra_pairs = [p for _, p in kept] if pair_mode else None
    tokens = data.train_tokens
    if extra_texts:
        log(f"distill: adding {len(extra_texts):,} unlabelled texts taught by the teacher's soft labels only")
        cache_dir = default_cache_dir(cfg.data.cache_dir)
        how = dict(long_text=cfg.data.long_text, stride=cfg.data.chunk_stride, pooling=cfg.data.chunk_pooling)
        added = tokenize(data.tokenizer, extra_texts, cfg.model.max_length, cache_dir, pairs=extra_pairs, **how)
        if added.row_of_window is not None:  # data.long_text: chunks: each window a row, as the labelled ones
            extra_texts = [extra_texts[i] for i in added.row_of_window]
        tokens = tokens.concat(added.as_rows())
    is_transfer = np.zeros(len(labels) + len(extra_texts), dtype=bool)
    is_transfer[transfer] = True
    return StudentRows(
        data.train.texts + extra_texts,
        data.train.pairs + extra_pairs if pair_mode else None,
        np.concatenate([labels, np.full((len(extra_texts), *labels.shape[1:]), -1, dtype=labels.dtype)]),
        tokens,
        is_transfer,
    )


def student_loss(cfg: RunConfig, train_logits: np.ndarray, labels: np.ndarray):
    """The distillation loss of a batch, the teacher's logits looked up by each row's dataset index."""
    d = cfg.distill
    # The whole table moves to the training device once (first step), so looking rows up by their
    # dataset index needs no host round trip per step.
    table = {"logits": torch.from_numpy(np.ascontiguousarray(train_logits))}
    multi = labels.ndim == 2
    weights = class_weights_for(cfg, labels[(labels >= 0).all(axis=1)] if multi else labels)
    if weights is not None:
        table["weights"] = torch.from_numpy(weights)

    def loss_fn(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if table["logits"].device != logits.device:
            table["logits"] = table["logits"].to(logits.device)
        teacher_batch = table["logits"][batch["index"].to(logits.device)]
        if "weights" in table and table["weights"].device != logits.device:
            table["weights"] = table["weights"].to(logits.device)
        kd = kd_loss_multilabel if multi else kd_loss
        return kd(logits, teacher_batch, batch["labels"], d.temperature, d.alpha, table.get("weights"))

    return loss_fn


def distill(
    cfg: RunConfig,
    run_dir: Path,
    teacher: Union[None, str, Sequence[str]] = None,
    unlabelled: Sequence[str] = (),
    log: Callable[[str], None] = print,
    transfer_fraction: Optional[float] = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the student ``cfg`` with knowledge distillation; returns its summary.

    ``teacher``: one run directory or config, or several (an ensemble); default ``distill.teacher``.
    ``transfer_fraction``: default ``distill.transfer_fraction``.
    ``resume``: continue the student from its last checkpoint (the teacher's logits come from the cache).
    """
    d = cfg.distill
    teachers, fraction, unlabelled = distill_inputs(cfg, teacher, unlabelled, transfer_fraction)
    plan_or_refuse(cfg, log)  # the student is counted and guarded before anything else runs
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher_dirs = [resolve_teacher(t, cfg, run_dir, log, fraction) for t in teachers]
    check_teachers(teacher_dirs, cfg)

    data = prepare_data(cfg, log)
    rows = student_rows(cfg, data, fraction, unlabelled, log)
    cache = TeacherLogitsCache(default_cache_dir(cfg.data.cache_dir))
    train_logits = teacher_logits(teacher_dirs, rows.texts, cache, log, "training texts", rows.pairs)
    val_logits = teacher_logits(
        teacher_dirs, data.validation.texts, cache, log, "validation texts", data.validation.pairs
    )
    teacher_val = teacher_validation(val_logits, cfg, data, log)
    keep = confident_rows(rows, train_logits, d.min_teacher_confidence, log)
    no_gold = (rows.labels < 0).reshape(len(rows.labels), -1).all(axis=1)
    unlabelled_kept = int((keep & no_gold & ~rows.is_transfer).sum())
    if not keep.all():
        index = np.flatnonzero(keep)
        rows, train_logits = rows.take(index), train_logits[index]
    merged = TextData(
        rows.texts, rows.labels, np.arange(len(rows.texts), dtype=np.int64), data.train.source, pairs=rows.pairs
    )
    data = replace(data, train=merged, train_tokens=rows.tokens)

    extra_summary = {
        # `method` stays the adapter method the training loop reports; distillation is said here.
        "distill": f"T={d.temperature:g}, λ={d.alpha:g}",
        "teacher": " + ".join(str(t) for t in teacher_dirs),
        "teachers": [str(t) for t in teacher_dirs],
        "teacher_validation_accuracy": teacher_val["accuracy"],
        "teacher_validation_ci95": teacher_val["accuracy_ci95"],
        **({"teacher_validation_micro_f1": teacher_val["micro_f1"]} if "micro_f1" in teacher_val else {}),
        "distill_temperature": d.temperature,
        "distill_alpha": d.alpha,
        "unlabelled_rows": unlabelled_kept,
        "transfer_rows": int(rows.is_transfer.sum()),
        "transfer_fraction": fraction,
        "min_teacher_confidence": d.min_teacher_confidence,
        "dropped_unconfident_rows": int((~keep).sum()),
    }
    loss_fn = student_loss(cfg, train_logits, rows.labels)
    summary = train(cfg, run_dir, loss_fn=loss_fn, data=data, log=log, extra_summary=extra_summary, resume=resume)
    key = teacher_val.get("primary_metric", "accuracy")
    log(
        f"distillation: teacher {teacher_val[key]:.4f} -> student {summary[f'validation_{key}']:.4f} "
        f"validation {key.replace('_f1', ' F1')} with {summary['trainable_params']:,} trainable parameters"
    )
    return summary
