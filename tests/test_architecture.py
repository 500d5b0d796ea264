"""The package's folders are its layers: every import runs down (or within a layer), no file imports one that
imports it back, the arrows the architecture forbids do not exist, and no code is loaded by file path."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "steer_eval"
# Bottom to top: a module may import its own layer and the ones before it, never one after it.
LAYERS = ["errors", "scoring", "steering", "backends", "runs", "judges", "report", "training", "lmeval", "serving",
          "cli"]
SAME_LAYER = {"__init__": "errors", "log": "errors", "compat": "errors", "data": "scoring", "tasks": "lmeval"}
NEVER = [("report", "backends", "reading records needs no model"),
         ("judges", "report", "a judge adds scores; tables are the report's"),
         ("training", "cli", "trainers use the library, not the command line"),
         ("lmeval", "cli", "an adapter must not depend on the command line")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    top = module.split(".")[1] if "." in module else "__init__"
    return SAME_LAYER.get(top, top)


def _imports(path: Path) -> set[str]:
    """Every steer_eval module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("steer_eval")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steer_eval"):
            for alias in node.names:  # `from steer_eval.cli import reports` imports the module cli.reports
                candidate = f"{node.module}.{alias.name}"
                sub = ROOT / Path(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").is_file() or sub.is_dir() else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_sits_in_a_known_layer():
    assert {_layer(module) for module in _graph()} <= set(LAYERS)


def test_imports_never_run_up_the_layers():
    upward = [f"{source} -> {target}" for source, targets in _graph().items() for target in targets
              if LAYERS.index(_layer(target)) > LAYERS.index(_layer(source))]
    assert upward == []


@pytest.mark.parametrize("source,target,why", NEVER)
def test_forbidden_arrows_do_not_exist(source, target, why):
    crossing = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
                if _layer(a) == source and _layer(b) == target]
    assert crossing == [], why


def test_no_import_cycles():
    graph = _graph()
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_trainers_and_scripts_import_the_package_not_each_other():
    for folder in ("trainers", "scripts", "benchmarks"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    assert node.module.split(".")[0] not in {"trainers", "scripts", "benchmarks"}, path


def test_library_modules_stay_readable_in_size():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
