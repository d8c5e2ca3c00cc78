"""Commands that make runs: plan, train, distill, search. Each parses nothing itself: it hands the
parsed arguments to :mod:`lorabudget.api` and prints what comes back."""

from __future__ import annotations

import argparse

from lorabudget import api
from lorabudget.config import parse_set
from lorabudget.signals import Terminated


def columns_of(args: argparse.Namespace) -> dict:
    return {
        "text_column": args.text_column,
        "text_pair_column": args.text_pair_column,
        "label_column": args.label_column,
    }


def overrides_of(args: argparse.Namespace) -> dict:
    """The ``--set`` values, and ``--multi-label`` as ``model.problem_type``."""
    values = parse_set(args.overrides)
    if getattr(args, "multi_label", False):
        values["model.problem_type"] = "multi_label"
    return values


def cmd_plan(args: argparse.Namespace) -> int:
    plan = api.plan(args.config, data=args.data, overrides=overrides_of(args), **columns_of(args))
    print(plan)
    return 0 if plan.fits else 3


def _resume_hint(err: Terminated, args: argparse.Namespace) -> None:
    """The command that continues a stopped run, added to the stop message."""
    if getattr(err, "resumable", False):
        same = " ..." if args.overrides or args.command == "distill" else ""  # the same --set, teachers
        err.detail += (
            f"; continue with the same options: lorabudget {args.command} {args.config}{same} "
            f"--output {err.run_dir} --resume"
        )


def _run_args(args: argparse.Namespace) -> dict:
    return {
        "data": args.data,
        "output": args.output,
        "overrides": overrides_of(args),
        "resume": args.resume,
        "overwrite": args.overwrite,
        "trust_pickle": args.trust_pickle,
        "report": not args.no_report,
        **columns_of(args),
    }


def cmd_train(args: argparse.Namespace) -> int:
    try:
        api.train(args.config, **_run_args(args))
    except Terminated as err:
        _resume_hint(err, args)
        raise
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    try:
        api.distill(
            args.config,
            teacher=args.teacher,
            unlabelled=args.unlabelled or (),
            transfer_fraction=args.transfer_fraction,
            **_run_args(args),
        )
    except Terminated as err:
        _resume_hint(err, args)
        raise
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    api.search(
        args.config,
        args.data,
        trials=args.trials,
        budget=args.budget,
        storage=args.storage,
        space=args.space,
        overrides=overrides_of(args),
        trial_overrides=list(args.trial_overrides),
        output=args.output,
        study_name=args.study,
        timeout=args.timeout,
        workers=args.workers,
        metric=args.metric,
        multi_objective=args.multi_objective,
        pruner=args.pruner,
        seed=args.seed,
        max_rejections=args.max_rejections,
        warm_start=not args.no_warm_start,
        **columns_of(args),
    )
    return 0
