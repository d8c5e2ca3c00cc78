"""Commands that use finished runs: evaluate, predict, classify, serve, export, report, compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorabudget import api
from lorabudget.console import say, warn
from lorabudget.errors import LorabudgetError


def _run(args: argparse.Namespace, engine: str = "torch") -> api.Run:
    """The run named on the command line, loaded on first use with the command's settings."""
    from lorabudget.inference.runs import check_threads

    check_threads(args.threads)
    return api.Run(Path(args.run), engine=engine, threads=args.threads, precision=args.precision)


def cmd_evaluate(args: argparse.Namespace) -> int:
    evaluation = _run(args).evaluate(
        args.data,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
        trust_pickle=args.trust_pickle,
        report=False,
        threshold=args.threshold,
    )
    print(evaluation)
    print(f"written: {api.Run(Path(args.run)).files.eval_path}")
    from lorabudget.api.files import write_run_report

    write_run_report(Path(args.run), not args.no_report, log=print)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lorabudget.api.files import predict_to_file

    predict_to_file(
        _run(args, args.engine),
        args.input,
        args.output,
        probabilities=args.probabilities,
        label_format=args.label_format,
        columns={"text": args.text_column, "text_pair": args.text_pair_column, "label": args.label_column},
        trust_pickle=args.trust_pickle,
        report=not args.no_report,
        threshold=args.threshold,
    )
    return 0


def valid_text(text: str) -> tuple[str, bool]:
    """``text`` with invalid UTF-8 (kept by Python as lone surrogates, which no tokenizer encodes) replaced
    by U+FFFD, and whether anything was replaced."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        escaped_only = all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)
        raw = text.encode("utf-8", "surrogateescape" if escaped_only else "replace")
        return raw.decode("utf-8", "replace"), True


def _texts_to_classify(given: list[str]) -> list[str]:
    """The texts of ``classify``: its arguments, or stdin's non-blank lines for ``-``."""
    if given == ["-"]:
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "replace")
        lines = raw.splitlines()
        given = [line.decode("utf-8", "surrogateescape") for line in lines if line.strip()]
        if len(lines) > len(given):
            warn(f"skipped {len(lines) - len(given):,} blank line(s) of stdin")
    checked = [valid_text(t) for t in given]
    replaced = sum(changed for _, changed in checked)
    if replaced:
        warn(f"{replaced:,} text(s) held invalid UTF-8: those bytes were replaced with U+FFFD")
    texts = [text for text, _ in checked]
    if not texts or any(not t.strip() for t in texts):
        raise LorabudgetError("classify needs one or more non-empty texts")
    return texts


def cmd_classify(args: argparse.Namespace) -> int:
    from lorabudget.inference.multilabel import check_threshold

    check_threshold(args.threshold)
    run = _run(args)
    texts = _texts_to_classify(list(args.texts))
    pairs = None
    if run.loaded.is_pair_run:  # a pair is FIRST<TAB>SECOND in a text argument or stdin line
        split = [t.split("\t", 1) if "\t" in t else [t, ""] for t in texts]
        if any(not first.strip() or not second.strip() for first, second in split):
            raise LorabudgetError(
                "this run classifies sentence pairs: give each as FIRST<TAB>SECOND (arguments or stdin lines)"
            )
        texts, pairs = [first for first, _ in split], [second for _, second in split]
    predictions = run.predict(texts, pairs=pairs, threshold=args.threshold)
    for i, (text, label, probs) in enumerate(zip(texts, predictions.labels, predictions.probabilities)):
        short = text if len(text) <= 70 else text[:67] + "..."
        if predictions.multi_label:  # the classes joined by |, and each one's probability (empty: none)
            scores = "|".join(f"{float(probs[j]):.3f}" for j in predictions.label_ids[i])
            print(f"{'|'.join(label)}\t{scores}\t{short}")
        else:
            print(f"{label}\t{float(probs.max()):.3f}\t{short}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lorabudget.serve.app import ServeSettings, bind, load_for_serving, serve

    if not 0 <= args.port <= 65535:
        raise LorabudgetError("--port must be within 0-65535")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        body_timeout_s=args.body_timeout_s,
        header_timeout_s=args.header_timeout_s,
        max_connections=args.max_connections,
        threshold=args.threshold,
    )
    sock = bind(args.host, args.port)  # a taken port is said before the run is loaded (or exported)
    try:
        run = load_for_serving(Path(args.run), args.engine, args.precision, args.threads)  # integrity checked here
        serve(run, args.host, args.port, settings, sockets=[sock])
    finally:
        sock.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = api.Run(Path(args.run)).export(args.format, args.output, quantize=args.quantize, overwrite=args.overwrite)
    from lorabudget.rundir.layout import RunDir

    print(f"exported {args.run} as {args.format} to {path} (model card: {RunDir(path).model_card_path})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lorabudget.rundir.lifecycle import check_not_in_use

    run = api.Run(Path(args.run))
    run.files.read_config()  # a clear error for a folder that is not a run
    run.files.check_writable_layout()
    check_not_in_use(run.path, "a report written now")
    say(f"report: {run.report()}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    comparison = api.compare(
        args.runs, output=args.output, names=args.names or (), allow_different_classes=args.allow_different_classes
    )
    print(comparison.markdown)
    print(f"written: {comparison.path}, {comparison.path.with_name('compare.csv')}")
    return 0
