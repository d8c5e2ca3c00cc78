"""Commands that describe this installation: presets, cache, env."""

from __future__ import annotations

import argparse

from lorabudget.config import resolve_config_path
from lorabudget.errors import LorabudgetError


def cmd_presets(args: argparse.Namespace) -> int:
    from lorabudget.report.presets import format_preset_table, preset_rows

    if args.action == "show":
        if not args.name:
            raise LorabudgetError("presets show needs a preset name")
        path = resolve_config_path(args.name)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise LorabudgetError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
        print(text, end="")
        return 0
    print(format_preset_table(preset_rows()))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from lorabudget.data.cache import cache_folders, clear_caches, human_size

    held = clear_caches() if args.action == "clear" else cache_folders()
    verb = "removed" if args.action == "clear" else "holds"
    for folder in held:
        print(f"{folder.path} {verb} {folder.files:,} files, {human_size(folder.bytes)}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from lorabudget.envinfo import report

    print(report(probe=not args.no_probe), end="")
    return 0
