"""The library's layers read top to bottom: each module imports only from layers below (or its
own), analyses never import training, and there is no import loop."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"

#: Layer of every module: 1 data and models, 2 the residual units, 3 training and the zoo,
#: 4 analyses (which never need training), 5 what the chapters use on top.
LAYERS: dict[str, int] = {
    "io": 1, "datafiles": 1, "krylov": 1, "data": 1, "directions": 1, "models": 1, "metrics": 1,
    "blocks": 2,
    "recipe": 3, "runstate": 3, "trajectory": 3, "train": 3, "catalog": 3, "runner": 3, "zoo": 3,
    "landscape": 4, "hessian": 4, "fourier": 4, "perturbations": 4, "features": 4, "alternet": 4, "summary": 4,
    "similarity": 4, "attention": 4, "featurevis": 4,
    "plots": 5, "stats": 5, "claims": 5, "notebook": 5,
}


def lib_imports(path: Path) -> set[str]:
    """The lib modules a module imports (``from . import x``, ``from .x import y``, ``from lib.x ...``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:
                found |= {a.name for a in node.names}
            elif node.level == 1:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("lib."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lib.")}
    return found


GRAPH = {p.stem: lib_imports(p) for p in LIB.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    assert set(GRAPH) == set(LAYERS), set(GRAPH) ^ set(LAYERS)


def test_imports_go_down_and_analyses_never_import_training():
    wrong = [(m, dep) for m, deps in GRAPH.items() for dep in deps if LAYERS[dep] > LAYERS[m]]
    assert not wrong, f"imports that go up a layer: {wrong}"
    training = {m for m, layer in LAYERS.items() if layer == 3}
    analyses = {m for m, layer in LAYERS.items() if layer == 4}
    assert not [(m, d) for m in analyses for d in GRAPH[m] & training]


def test_no_import_loop():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH[module]):
            assert state.get(dep) != "open", f"import loop: {' -> '.join(path + [module, dep])}"
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
