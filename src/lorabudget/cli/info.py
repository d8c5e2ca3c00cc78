"""Commands that describe this installation: presets, cache, env."""

from __future__ import annotations

import argparse

from lorabudget.errors import LorabudgetError


def cmd_presets(args: argparse.Namespace) -> int:
    from lorabudget.report.presets import format_preset_table, preset_rows, preset_text

    if args.action == "show":
        if not args.name:
            raise LorabudgetError("presets show needs a preset name")
        print(preset_text(args.name), end="")
        return 0
    print(format_preset_table(preset_rows()))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from lorabudget.data.cache import cache_folders, clear_caches

    held = clear_caches() if args.action == "clear" else cache_folders()
    for folder in held:
        print(folder.line(args.action == "clear"))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from lorabudget.envinfo import report

    print(report(probe=not args.no_probe), end="")
    return 0
