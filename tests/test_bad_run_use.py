"""Misused and damaged runs, one table: training into an existing, locked or unwritable folder, resuming
what cannot be resumed, predicting, evaluating, exporting from a run that is damaged, tampered with,
being replaced, or onto a full or read-only disk. Each must exit with its documented code, print exactly
one error line (no traceback), leave no file created or changed that should not be, and leave the run
intact. The bad-input table (test_bad_inputs.py) holds config values and data; the same workspace.
"""

from __future__ import annotations

import shutil
import socket

import pytest
from bad_input_workspace import (
    OTHER_HOST,
    Case,
    T,
    Workspace,
    corrupt_adapter,
    device_node,
    fill_nan,
    lock_held_by,
    negate_head,
    pickle_of,
    run_case,
    truncate,
    unfinished,
    with_export,
    without_checksum,
)

CASES = [
    # --- run directories
    Case("run-exists", lambda w: T(w, "--output", "run"), "exists; pass --overwrite"),
    Case(
        "overwrite-non-run-folder",
        lambda w: T(w, "--output", "other", "--overwrite"),
        "not a lorabudget run directory",
        setup=lambda w: ((w / "other").mkdir(), (w / "other" / "notes.txt").write_text("mine")),
    ),
    Case("output-is-a-file", lambda w: T(w, "--output", "train.csv", "--overwrite"), "not a lorabudget run directory"),
    Case("output-under-a-file", lambda w: T(w, "--output", "train.csv/run"), "is not a folder"),
    Case("output-not-writable", lambda w: T(w, "--output", "/proc/lorabudget-run"), "cannot write"),
    Case("resume-finished-run", lambda w: T(w, "--output", "run", "--resume"), "has finished training"),
    Case("resume-missing-run", lambda w: T(w, "--output", "nothing", "--resume"), "nothing to resume"),
    Case("resume-and-overwrite", lambda w: T(w, "--output", "run", "--resume", "--overwrite"), "pass only one"),
    Case(
        "resume-other-config",
        lambda w: T(w, "--output", "run", "--resume", "--set", "training.seed=8"),
        "config differs",
        setup=unfinished,
    ),
    Case(
        "resume-without-checkpoint",
        lambda w: T(w, "--output", "run", "--resume"),
        "no checkpoint to resume from",
        setup=unfinished,
    ),
    Case(
        "resume-corrupt-checkpoint",
        lambda w: T(w, "--output", "run", "--resume"),
        "unreadable checkpoint",
        setup=lambda w: (
            unfinished(w),
            (w.run / "checkpoint").mkdir(),
            (w.run / "checkpoint" / "state.pt").write_bytes(b"junk"),
        ),
    ),
    Case(
        "locked-by-live-process",
        lambda w: T(w, "--output", "run", "--overwrite"),
        f"in use by process 1 on {socket.gethostname()}",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "locked-on-other-host",
        lambda w: T(w, "--output", "run", "--resume"),
        f"in use by process 999999 on {OTHER_HOST}",
        setup=lambda w: (unfinished(w), lock_held_by(999999, OTHER_HOST)(w)),
    ),
    # --- using a run
    Case(
        "predict-pickle-untrusted",
        lambda w: ["predict", "run", "--input", "evil.pkl", "--output", "p.csv"],
        "--trust-pickle",
    ),
    Case("evaluate-pickle-untrusted", lambda w: ["evaluate", "run", "--data", "evil.pkl"], "--trust-pickle"),
    Case(
        "predict-pickle-of-int",
        lambda w: ["predict", "run", "--input", "int.pkl", "--output", "p.csv", "--trust-pickle"],
        "the pickle holds an int",
        setup=pickle_of("int.pkl", 3),
    ),
    Case(
        "predict-output-is-input",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "./unlabelled.csv"],
        "is the input file",
    ),
    Case(
        "predict-output-not-writable",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "/proc/p.csv"],
        "cannot write",
    ),
    Case(
        "predict-output-is-folder",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "run"],
        "is a folder",
    ),
    Case(
        "predict-input-missing",
        lambda w: ["predict", "run", "--input", "x.csv", "--output", "p.csv"],
        "data file not found",
    ),
    Case("predict-not-a-run", lambda w: ["predict", "nope", "--input", "unlabelled.csv"], "run directory not found"),
    Case(
        "predict-negative-threads",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--threads", "-1"],
        "--threads must be",
    ),
    Case("classify-negative-threads", lambda w: ["classify", "run", "--threads", "-1", "hello"], "--threads must be"),
    Case("classify-zero-threads", lambda w: ["classify", "run", "--threads", "0", "hello"], "--threads must be"),
    Case("classify-empty-text", lambda w: ["classify", "run", " "], "non-empty texts"),
    Case(
        "adapter-bytes-changed", lambda w: ["classify", "run", "hello"], "sha256 does not match", setup=corrupt_adapter
    ),
    Case(
        "adapter-truncated",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", "p.csv"],
        "unreadable weights",
        setup=without_checksum(truncate),
    ),
    Case("adapter-nan", lambda w: ["classify", "run", "hello"], "non-finite values", setup=without_checksum(fill_nan)),
    Case(
        "adapter-missing-file",
        lambda w: ["classify", "run", "hello"],
        "missing",
        setup=lambda w: (w.run / "adapter" / "adapter_model.safetensors").unlink(),
    ),
    Case("evaluate-no-label-column", lambda w: ["evaluate", "run", "--data", "unlabelled.csv"], "no label column"),
    Case("report-not-a-run", lambda w: ["report", "."], "not a lorabudget run directory"),
    Case("compare-missing-run", lambda w: ["compare", "run", "nope", "--output", "cmp"], "run directory not found"),
    Case(
        "distill-without-teacher",
        lambda w: ["distill", str(w.cfg), "--output", "student", "--no-report"],
        "needs a teacher",
    ),
    Case(
        "distill-train-on-validation",
        lambda w: [
            "distill",
            str(w.cfg),
            "--output",
            "student",
            "--teacher",
            "run",
            "--set",
            "data.train_on_validation=true",
            "--no-report",
        ],
        "keeps the validation rows out of the teacher",
    ),
    Case(
        "distill-resume-missing",
        lambda w: ["distill", str(w.cfg), "--output", "student", "--resume"],
        "nothing to resume",
    ),
    Case("argparse-missing-option", lambda w: ["predict", "run"], "required: --input"),
    # --- paths, devices, full and read-only disks
    Case(
        "export-output-under-a-file",
        lambda w: ["export", "run", "--format", "peft", "--output", "train.csv/sub"],
        "is not a folder",
    ),
    Case(
        "predict-to-full-device",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", str(w.root.parent / "fulldev")],
        "No space left on device",
        setup=device_node("fulldev", 1, 7),
    ),
    Case(
        "train-onto-full-disk",
        lambda w: T(w, "--output", str(w.root.parent / "mnt" / "full" / "run")),
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "predict-onto-full-disk",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--output", str(w.root.parent / "mnt/full/p.csv")],
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "export-onto-full-disk",
        lambda w: ["export", "run", "--format", "hf", "--output", str(w.root.parent / "mnt" / "full" / "exp")],
        "No space left on device",
        tags={"full"},
    ),
    Case(
        "train-onto-read-only-disk",
        lambda w: T(w, "--output", str(w.root.parent / "mnt" / "readonly" / "run")),
        "Read-only file system",
        tags={"readonly"},
    ),
    Case(
        "export-onto-read-only-disk",
        lambda w: ["export", "run", "--format", "peft", "--output", str(w.root.parent / "mnt" / "readonly" / "e")],
        "Read-only file system",
        tags={"readonly"},
    ),
    Case(
        "export-unfinished-run-without-weights",
        lambda w: ["export", "run", "--format", "peft", "--output", "e"],
        "has no trained weights yet",
        setup=lambda w: (unfinished(w), shutil.rmtree(w.run / "adapter")),
    ),
    # --- tampered ONNX
    Case(
        "onnx-export-tampered",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "sha256 does not match",
        setup=with_export(negate_head),
    ),
    Case(
        "onnx-export-truncated",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "sha256 does not match",
        setup=with_export(truncate),
    ),
    Case(
        "onnx-export-truncated-without-checksums",
        lambda w: ["predict", "exp", "--input", "unlabelled.csv", "--output", "p.csv"],
        "unreadable ONNX model",
        setup=with_export(truncate, drop_checksums=True),
    ),
    # --- a run being replaced (--overwrite) or trained holds its lock: writers into it refuse
    Case(
        "predict-during-overwrite",
        lambda w: ["predict", "run", "--input", "unlabelled.csv"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(  # its RUN/onnx/ export is made with the record, into the run
        "predict-onnx-during-overwrite",
        lambda w: ["predict", "run", "--input", "unlabelled.csv", "--engine", "onnx"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "evaluate-during-overwrite",
        lambda w: ["evaluate", "run", "--data", "train.csv"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "report-during-overwrite",
        lambda w: ["report", "run"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
    Case(
        "export-into-run-during-overwrite",
        lambda w: ["export", "run", "--format", "peft", "--output", "run/exported"],
        "in use by process 1",
        setup=lock_held_by(1, socket.gethostname()),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_run_use(case: Case, ws: Workspace, capsys, request):
    run_case(case, ws, capsys, request)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert not {i for i in ids if ids.count(i) > 1}
