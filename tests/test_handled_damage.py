"""Damage and odd outputs that are handled (exit 0) rather than refused, each with its warning: a device
as the output, ``--output -``, damaged metrics lines, invalid UTF-8, a run without checksums, rewritten
caches, a tampered RUN/onnx export, SIGTERM inside atomic outputs, a read-only run.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess

import pytest
from bad_input_workspace import (
    Workspace,
    device_node,
    lock_held_by,
    mount_tmpfs,
    negate_head,
    run_cli,
    snapshot,
    without_checksum,
)


def test_device_output_is_written_through_not_replaced(ws: Workspace, capsys):
    node = ws.root.parent / "nulldev"
    device_node("nulldev", 1, 3)(ws)  # skips where mknod is not allowed
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", str(node)], capsys)
    assert code == 0, err
    assert stat.S_ISCHR(os.stat(node).st_mode), "the device node was replaced by a regular file"
    assert not [p for p in node.parent.iterdir() if p.name.startswith(".nulldev.")]


def test_output_dash_writes_the_csv_to_stdout(ws: Workspace, capsys):
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", "-"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 81  # 80 input rows, nothing else on stdout
    assert "to stdout" in err and not (ws.root / "-").exists()


def test_predict_elsewhere_while_run_is_locked_keeps_the_run(ws: Workspace, capsys):
    lock_held_by(1, socket.gethostname())(ws)
    before = snapshot(ws.run)
    code, out, err = run_cli(["predict", "run", "--input", "unlabelled.csv", "--output", "p.csv"], capsys)
    assert code == 0, err
    assert (ws / "p.csv").is_file()
    assert snapshot(ws.run) == before  # nothing written into the run that the swap would delete


def test_report_and_compare_skip_damaged_metrics_lines(ws: Workspace, capsys):
    with open(ws.run / "metrics.jsonl", "ab") as fh:
        fh.write(b'\xff\xfe\x00garbage\n{"type": "train", "step": 3, "lo')  # undecodable, then a partial line
    code, out, err = run_cli(["report", "run"], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "unreadable line" in line]
    assert warnings and "metrics.jsonl" in warnings[0] and "skipped 2" in warnings[0]
    code, out, err = run_cli(["compare", "run", "--output", "cmp"], capsys)  # reads summaries and evaluations
    assert code == 0, err


def test_classify_replaces_invalid_utf8_and_counts_blank_lines(ws: Workspace, capsys, monkeypatch):
    import io
    import sys

    stdin = io.TextIOWrapper(io.BytesIO(b"stocks rallied\n\xff\xfe broken bytes\n\n  \nthe match ended\n"))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(["classify", "run", "-"], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 3 and "\ufffd" in out.splitlines()[1]
    assert "1 text(s) held invalid UTF-8" in err and "skipped 2 blank line(s)" in err
    # on the command line Python keeps invalid bytes as surrogates
    code, out, err = run_cli(["classify", "run", b"caf\xe9 news".decode("utf-8", "surrogateescape")], capsys)
    assert code == 0 and "1 text(s) held invalid UTF-8" in err


def test_run_without_checksums_says_it_cannot_verify(ws: Workspace, capsys):
    without_checksum(lambda path: None)(ws)
    code, out, err = run_cli(["classify", "run", "hello"], capsys)
    assert code == 0, err
    assert "cannot be verified" in err


def test_rewritten_token_cache_is_rebuilt_not_used(tiny_roberta, tmp_path, capsys):
    """Training's token cache (inference keeps none): a valid entry rewritten with other ids is rebuilt."""
    import numpy as np

    from lorabudget.data.batching import TOKENS_FOLDER, tokenize
    from lorabudget.model.hub import load_tokenizer

    tokenizer, texts = load_tokenizer(str(tiny_roberta)), ["the market rallied", "a game of the season"]
    first = tokenize(tokenizer, texts, 32, tmp_path)
    (path,) = (tmp_path / TOKENS_FOLDER).glob("*.npz")
    with np.load(path) as data:  # its recorded key and checksum left as they were
        entry = {k: data[k] for k in data.files}
    entry["ids"] = np.roll(entry["ids"], 1)
    np.savez(path, **entry)
    again = tokenize(tokenizer, texts, 32, tmp_path)
    assert "does not match its key or checksum: rebuilding it" in capsys.readouterr().err
    assert np.array_equal(again.ids, first.ids) and np.array_equal(again.offsets, first.offsets)


def test_teacher_logit_cache_with_other_columns_is_rebuilt(tmp_path):
    import numpy as np

    from lorabudget.training.distill import TeacherLogitsCache

    cache = TeacherLogitsCache(tmp_path)
    key = cache.key("teacher", ["a", "b"])
    cache.save(key, np.ones((2, 4), dtype=np.float32))
    assert cache.load(key, 2) is not None
    with np.load(cache.path(key)) as data:
        entry = {k: data[k] for k in data.files}
    entry["logits"] = np.ones((2, 3), dtype=np.float32)  # key and row count still match
    np.savez(cache.path(key), **entry)
    assert cache.load(key, 2) is None


def test_tampered_run_onnx_export_is_made_again(ws: Workspace, capsys):
    argv = ["predict", "run", "--input", "unlabelled.csv", "--engine", "onnx", "--no-report"]
    assert run_cli(argv, capsys)[0] == 0  # into the run: RUN/onnx/ made
    negate_head(ws.run / "onnx" / "model.onnx")
    code, out, err = run_cli(argv + ["--output", "p2.csv"], capsys)
    assert code == 0, err
    assert "sha256 does not match" in err and "exporting it again" in err
    assert (ws.run / "predictions.csv").read_text() == (ws / "p2.csv").read_text()


def test_sigterm_inside_atomic_outputs_leaves_no_temporary_files(tmp_path):
    import signal

    from lorabudget.io import atomic_dir, atomic_path
    from lorabudget.signals import Terminated, handle_termination

    for writer in (atomic_dir, atomic_path):
        with handle_termination(), pytest.raises(Terminated) as stopped:
            with writer(tmp_path / "out") as tmp:
                (tmp / "part").write_text("x") if writer is atomic_dir else tmp.write_text("x")
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(100):  # the handler runs between bytecodes
                    pass
        assert stopped.value.exit_code == 143
        assert list(tmp_path.iterdir()) == []


def test_predict_elsewhere_from_a_read_only_run(ws: Workspace, tmp_path, capsys):
    mnt = tmp_path / "mnt" / "ro-run"
    mount_tmpfs(mnt, "size=8m")
    try:
        shutil.copytree(ws.run, mnt / "run")
        remount = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if remount.returncode:
            pytest.skip(f"cannot remount read-only ({remount.stderr.strip()})")
        argv = ["predict", str(mnt / "run"), "--input", "unlabelled.csv", "--no-report"]
        code, out, err = run_cli(argv + ["--output", "p.csv"], capsys)
        assert code == 0, err
        assert (ws / "p.csv").is_file()  # a CSV outside the run: nothing to record in the run
        code, out, err = run_cli(argv, capsys)  # the default output is inside the run: one line, exit 2
        assert code == 2 and len([line for line in err.splitlines() if "error:" in line]) == 1
        assert "Read-only file system" in err
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


EXPORT_CHILD = """
import sys, time
import lorabudget.export.formats as F
def stalled_export(*args, **kwargs):
    print("TERM ME", flush=True)
    time.sleep(300)  # the SIGTERM handler raises out of the sleep
F.export_onnx = stalled_export
from lorabudget.cli import main
sys.exit(main({argv!r}))
"""


def test_sigterm_during_onnx_export_removes_its_temporary_folder(ws: Workspace):
    import signal
    import sys
    import time

    argv = ["export", str(ws.run), "--format", "onnx", "--output", str(ws / "exp")]
    child = subprocess.Popen(
        [sys.executable, "-c", EXPORT_CHILD.format(argv=argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        for line in child.stdout:
            if "TERM ME" in line or time.time() > deadline:
                break
        assert [p.name for p in ws.root.iterdir() if p.name.startswith(".exp.")], "the export had not started"
        os.kill(child.pid, signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "lorabudget export: stopped by SIGTERM"
    assert not [p.name for p in ws.root.iterdir() if p.name.startswith(".exp") or p.name == "exp"]
