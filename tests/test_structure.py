"""The package's structure: layers whose imports run one way (no cycles), one owner of the run
directory's file names, and one method registry that every consumer agrees with."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lorabudget
from lorabudget.methods.registry import METHODS

SRC = Path(lorabudget.__file__).parent
METHODS_PAGE = SRC.parents[1] / "docs" / "guide" / "methods.md"

# Bottom to top: a module may import from its own layer's package and from layers below, never above.
LAYERS = [
    {
        "errors",
        "io",
        "console",
        "stats",
        "metrics",
        "signals",
        "runconfig",
        "version",
        "labelsets",
        "metrics_multilabel",
    },
    {"methods"},
    {"config"},
    {"model", "data"},
    {"rundir"},
    {"inference"},
    {"training"},
    {"report"},
    {"export"},
    {"search"},
    {"serve"},
    {"api"},
    {"cli", "envinfo", "__init__"},
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The lorabudget modules ``module`` imports: imports inside functions and ``if TYPE_CHECKING:``
    blocks included (a type a lower layer needs belongs at or below it), the package root too. For
    ``from PACKAGE import MODULE`` the edge goes to the module, not to the package's ``__init__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = submodules if len(submodules) == len(node.names) else [base] + submodules
        else:
            continue
        targets |= {n for n in names if n in modules and n != module}
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer of tests/test_structure.py's LAYERS")


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_run_down_the_layers():
    upward = [f"{m} -> {t}" for m, targets in _graph().items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert not upward, "imports running up the layers: " + "; ".join(upward)


def test_every_package_says_what_it_is_for():
    for init in SRC.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{init} has no docstring saying what the package is for"


# The run directory's file names: spelled in rundir/layout.py and nowhere else in the package.
RUN_FILES = (
    "config.yaml",
    "budget.json",
    "metrics.jsonl",
    "summary.json",
    "eval.json",
    "predictions.csv",
    "predictions.json",
    "report.md",
    "state.pt",
    "lorabudget_export.json",
    "adapter_config.json",
)


def test_run_directory_file_names_have_one_owner():
    from lorabudget.rundir import layout

    owner = Path(layout.__file__)
    spelled = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES:
                spelled.append((path, node.value))
    assert all(path == owner for path, _ in spelled), [f"{p.relative_to(SRC)}: {v}" for p, v in spelled if p != owner]
    assert {v for _, v in spelled} == set(RUN_FILES)  # the owner does name them all


# --------------------------------------------------------------------------------------------
# The method registry is the single source: each consumer below agrees with it.


def test_config_accepts_exactly_the_registered_methods(tiny_config):
    from lorabudget.config import from_dict
    from lorabudget.errors import LorabudgetError

    for name in METHODS:
        values = tiny_config(adapter={"method": name, "modules": list(METHODS[name].default_modules) or None})
        if METHODS[name].placement == "model":
            values["adapter"] = {"method": name}
            values["budget"] = {"max_trainable_params": None}
        assert from_dict(values).adapter.method == name
    with pytest.raises(LorabudgetError, match="allowed values: " + re.escape(", ".join(repr(m) for m in METHODS))):
        from_dict(tiny_config(adapter={"method": "sparse"}))


def test_search_space_derives_its_method_lists_from_the_registry():
    from lorabudget.search import space

    default = space.default_space_raw()
    assert default["method"] == [m for m in METHODS if METHODS[m].searched_by_default]
    assert default["options"] == {m: METHODS[m].search_options for m in default["method"] if METHODS[m].search_options}
    parsed = space.parse_space({"method": list(METHODS)})
    assert parsed.methods() == list(METHODS)


def test_merging_and_hooks_come_from_the_registry():
    from lorabudget.methods import registry

    # Whether to merge is asked of registry.can_merge, which also knows a quantized base never merges:
    # no other module reads the registry's flag itself (test_methods.py checks that merging works).
    owner = Path(registry.__file__)
    readers = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path != owner
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr == "mergeable"
    ]
    assert not readers, f"modules deciding merges without registry.can_merge: {readers}"
    for name, method in METHODS.items():
        assert not registry.can_merge(name, quantized=True)
        assert (method.save_training_state is None) == (method.load_training_state is None), name
    assert METHODS["adalora"].after_optimizer_step is not None  # its rank allocator runs through the hook


def test_methods_page_lists_every_method():
    text = METHODS_PAGE.read_text(encoding="utf-8")
    rows = text[text.index("| method | what trains |") :].split("\n\n")[0].splitlines()
    table = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])}
    assert set(METHODS) <= table, f"docs/guide/methods.md's method table lacks {sorted(set(METHODS) - table)}"
