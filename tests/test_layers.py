"""The library's packages import downwards only, one rule each, and no module imports in a loop.

``core`` stands on nothing else of the library; ``zoo`` (training) and ``analyses`` build on
``core`` and never on each other (an analysis measures a trained model, it never trains one);
``report`` (statistics, verdicts, plots) stands alone.
"""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"

#: The packages each package may import from (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "zoo": {"core"},
    "analyses": {"core"},
    "report": set(),
}


def module_name(path: Path) -> str:
    """``lib/analyses/hessian.py`` -> ``analyses.hessian``; a package's ``__init__`` is the package."""
    parts = path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lib_imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """The lib modules that ``source`` (module ``package.name`` of lib) imports, as ``package.module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "lib" or node.module.startswith("lib.")):
                target = node.module.split(".")[1:]
            else:
                continue
            if len(target) >= 2:
                found.add(".".join(target[:2]))
            else:  # from <package> import module, ...
                found |= {".".join(target + [a.name]) if target else a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[1:3]) for a in node.names if a.name.startswith("lib.")}
    return found


MODULES = sorted(p for p in LIB.rglob("*.py"))
GRAPH = {module_name(p): lib_imports(p.read_text(), module_name(p), p.stem == "__init__")
         for p in MODULES if p.parent != LIB}


def test_every_module_lives_in_a_known_package():
    assert [p.name for p in LIB.glob("*.py")] == ["__init__.py"], "lib/ holds packages only"
    packages = {name.split(".")[0] for name in GRAPH}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)


def test_each_package_imports_only_what_its_rule_allows():
    wrong = [(m, dep) for m, deps in GRAPH.items() for dep in deps
             if dep.split(".")[0] != m.split(".")[0] and dep.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, f"imports across the packages' rules: {wrong}"


def test_every_import_names_a_real_module():
    known = set(GRAPH) | set(ALLOWED)
    unknown = [(m, dep) for m, deps in GRAPH.items() for dep in deps if dep not in known]
    assert not unknown, unknown


def test_lib_imports_reads_the_import_forms():
    """The parser itself, on a module written for it: relative, absolute and package imports."""
    source = ("from . import catalog, runstate\nfrom .recipe import Recipe\nfrom ..core import data as d\n"
              "from ..core.io import atomic_write\nimport lib.report.stats\nfrom lib.analyses import hessian\n"
              "import numpy\n")
    assert lib_imports(source, "zoo.probe") == {"zoo.catalog", "zoo.runstate", "zoo.recipe", "core.data",
                                                "core.io", "report.stats", "analyses.hessian"}
    assert lib_imports("from . import runner\n", "zoo", is_package=True) == {"zoo.runner"}


def test_no_import_loop():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH.get(module, ())):
            assert state.get(dep) != "open", f"import loop: {' -> '.join(path + [module, dep])}"
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
