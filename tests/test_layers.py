"""The package's shape, read from its imports (ast): layers point one way and nothing imports in a circle.

    cli / package API  →  workflows (training, finetune, inference, serving, tune)  →  building blocks (models, data,
    evaluation)  →  shared helpers (files, download, runtime, decoding, preprocessing, weights)  →  errors

Imports inside functions count too: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "resnetlab"

LAYERS = {
    "errors": 0, "_version": 0,
    "files": 1, "download": 1, "runtime": 1, "decoding": 1, "preprocessing": 1, "weights": 1, "schema": 1,
    "signals": 1,
    "models": 2, "data": 2, "evaluation": 2,
    "training": 3, "finetune": 3, "inference": 3, "serving": 3, "tune": 3, "lr_sweep": 3,
    "cli": 4, "__main__": 4, "testing": 4, "": 4,  # "" is the package itself (resnetlab/__init__.py: the Python API)
}
# Within a layer, only these (importer → imported) pairs are allowed. Building blocks are independent
# of each other (models know nothing of data and the reverse); fine-tuning runs the training engine.
SAME_LAYER_OK = {("finetune", "training"), ("serving", "inference"), ("tune", "training"), ("tune", "finetune"),
                 ("lr_sweep", "training"), ("lr_sweep", "finetune"), ("__main__", "cli"), ("weights", "download"),
                 ("weights", "files"),
                 ("download", "files")}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split("."))
    return (root.parent / rel).with_suffix(".py").is_file() or (root.parent / rel / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> set[str]:
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "resnetlab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "resnetlab":
                continue
            subs = {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}", root)}
            # `from pkg import submodule` runs pkg/__init__ too: it depends on both
            out |= {target} | subs
    out.discard(me)
    return out


def graph(root: Path = PKG) -> dict[str, set[str]]:
    return {module_name(p, root): imports_of(p, root) for p in root.rglob("*.py")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def against_layers(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in g.items():
        for dep in deps:
            a, b = unit(mod), unit(dep)
            if a == b:
                continue
            if LAYERS[b] > LAYERS[a] or (LAYERS[b] == LAYERS[a] and (a, b) not in SAME_LAYER_OK):
                bad.append(f"{mod} imports {dep}")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return found


def test_every_module_has_a_layer():
    units = {unit(m) for m in graph()}
    assert units <= set(LAYERS), f"modules without a layer in this test: {sorted(units - set(LAYERS))}"


def test_no_upward_or_sideways_imports():
    bad = against_layers(graph())
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_nothing_below_the_cli_imports_the_package_root():
    bad = [m for m, deps in graph().items() if "resnetlab" in deps and unit(m) not in ("cli", "__main__")]
    assert not bad, f"these import the package root (the public API layer): {bad}"


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_the_checks_can_fail(tmp_path):
    """Plant an upward import and a cycle in a copy of the package: both checks must see them."""
    import shutil
    copy = tmp_path / "resnetlab"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "models" / "planted.py").write_text("from ..training import runner\nfrom . import planted2\n")
    (copy / "models" / "planted2.py").write_text("from .planted import x\n")
    g = graph(copy)
    assert "resnetlab.models.planted imports resnetlab.training.runner" in against_layers(g)
    assert ["resnetlab.models.planted", "resnetlab.models.planted2", "resnetlab.models.planted"] in cycles(g)
