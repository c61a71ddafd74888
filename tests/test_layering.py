"""calm/ reads bottom-up: no module imports (at the top or inside a function) one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

CALM = Path(__file__).resolve().parent.parent / "calm"


def _imports() -> dict[str, set[str]]:
    graph = {}
    for path in CALM.glob("*.py"):
        if path.stem == "__init__":  # the package's lazy name table
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calm."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("calm.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def test_calm_modules_import_without_cycles():
    graph = _imports()
    order, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*path, module])
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            visit(dep, [*path, module])
        state[module] = "done"
        order.append(module)

    for module in sorted(graph):
        visit(module, [])
    assert {"corpus", "tokenizer", "data", "brier", "loop", "tasks", "train_ray", "train"} <= set(order)


def test_the_named_layers():
    graph = _imports()
    assert graph["corpus"] == set()  # the bottom: corpora and splits
    assert "data" not in graph["tokenizer"] and "tokenizer" in graph["data"]
    # BrierLM needs only the models' sampling interface, not their classes
    assert not graph["brier"] & {"energy_transformer", "baseline", "autoencoder", "checkpoint"}
    assert "train" not in graph["jscc"] and "ray" not in str(graph["loop"])
