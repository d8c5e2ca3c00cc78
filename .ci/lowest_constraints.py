"""Print a pip constraints file pinning every dependency of pyproject.toml (core and extras) to the lowest
version its ``>=`` bound allows, so that `LORABUDGET_CI_LOWEST=1 .ci/run` tests the bounds as declared.

torch is left out: it is installed first from the machine's local CPU build (a pin would pull a CUDA build).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SKIP = {"torch", "lorabudget"}


def lowest_pins(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    pins: dict[str, str] = {}
    for spec in specs:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(.*)$", spec.split(";")[0])
        name, constraint = match.group(1).lower(), match.group(3)
        low = re.search(r">=\s*([0-9][^,\s]*)", constraint)
        if name in SKIP or not low:
            continue
        version = low.group(1)
        # Two bounds for one package (core and an extra): the higher one is the lowest both allow.
        if name not in pins or tuple(map(int, re.findall(r"\d+", version))) > tuple(
            map(int, re.findall(r"\d+", pins[name]))
        ):
            pins[name] = version
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, version in sorted(lowest_pins(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
