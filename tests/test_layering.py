"""The house (DESIGN.md section 1): layers import downward, no circles anywhere, no study imports another study,
no file over 400 lines under experiments/. Every import counts, at the top of a module or inside a function.

The checks are functions of a source root, so each is also shown to fail on a tree with the fault planted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("calm", "environments", "protocols", "agents", "experiments")
# what each layer may import besides itself: experiments -> agents -> protocols -> calm; protocols and agents may
# use the channel models; environments and calm import nothing of ours
ALLOWED = {
    "calm": set(),
    "environments": set(),
    "protocols": {"calm", "environments"},
    "agents": {"protocols", "calm", "environments"},
    "experiments": {"agents", "protocols", "calm", "environments"},
}
ENGINE = "experiments.common"
MAX_LINES = 400


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules of ours it imports`` (resolved to modules that exist under ``root``)."""
    paths = {module_name(root, p): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for target in targets:
                # the longest prefix that is one of our modules: `from calm.data import x` -> calm.data
                parts = target.split(".")
                for i in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:i])
                    if candidate in paths:
                        if candidate != name:
                            deps.add(candidate)
                        break
        graph[name] = deps
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run up or sideways between the layers."""
    bad = []
    for module, deps in graph.items():
        layer = module.split(".")[0]
        for dep in deps:
            target = dep.split(".")[0]
            if target != layer and target not in ALLOWED[layer]:
                bad.append(f"{module} -> {dep}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of modules that import each other (Tarjan); a package's ``__init__``
    re-exporting its submodules is not a circle with them, so those edges are left out."""
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def studies(root: Path) -> set[str]:
    """The studies: the flat ``experiments/<study>.py`` files that run as ``python -m experiments.<study>``."""
    return {p.stem for p in (root / "experiments").glob("*.py")
            if p.stem != "__init__" and 'if __name__ == "__main__"' in p.read_text()}


def owner(module: str, names: set[str]) -> str | None:
    """The study a module of ``experiments`` belongs to: itself, or the longest study ``S`` with ``S_*.py``."""
    stem = module.split(".", 1)[1] if "." in module else ""
    matches = [s for s in names if stem == s or stem.startswith(s + "_")]
    return max(matches, key=len) if matches else None


def study_violations(root: Path, graph: dict[str, set[str]]) -> list[str]:
    """Imports between studies, from the engine up to a study, and study parts that belong to no study."""
    names = studies(root)
    bad = []
    for module, deps in graph.items():
        if not module.startswith("experiments.") or module.startswith(ENGINE + ".") or module == ENGINE:
            if module.startswith(ENGINE):
                bad += [f"{module} -> {d} (the engine imports a study)" for d in deps
                        if d.startswith("experiments.") and not d.startswith(ENGINE)]
            continue
        mine = owner(module, names)
        if mine is None:
            bad.append(f"{module} belongs to no study (a study's part is named <study>_*.py)")
            continue
        for dep in deps:
            if dep.startswith("experiments.") and not dep.startswith(ENGINE) and owner(dep, names) != mine:
                bad.append(f"{module} -> {dep} (a study imports another study)")
    return sorted(bad)


def long_files(root: Path) -> list[str]:
    return sorted(f"{p.relative_to(root)}: {n} lines" for p in (root / "experiments").rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)


# ------------------------------------------------------------------------------------------------------------
# the house as it is


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_layers_import_downward(graph):
    assert layer_violations(graph) == []


def test_no_circles_anywhere(graph):
    assert cycles(graph) == []


def test_no_study_imports_another_study(graph):
    assert study_violations(ROOT, graph) == []


def test_no_file_over_400_lines_under_experiments():
    assert long_files(ROOT) == []


def test_the_studies_are_found():
    assert {"referential_game", "reconstruction", "alignment", "relay", "broadcast", "dialogue", "steering",
            "compare_sae", "analyze_vectors", "scaling_k", "calm_scaling"} <= studies(ROOT)


def test_the_named_calm_layers(graph):
    """calm reads bottom-up: corpora, tokenizer, data; BrierLM needs only the models' sampling interface."""
    assert {d for d in graph["calm.corpus"] if d.startswith("calm.")} == set()
    assert "calm.data" not in graph["calm.tokenizer"] and "calm.tokenizer" in graph["calm.data"]
    assert not graph["calm.brier"] & {"calm.energy_transformer", "calm.baseline", "calm.autoencoder",
                                      "calm.checkpoint"}


def test_the_model_library_names_no_protocol():
    assert [p.name for p in (ROOT / "calm").rglob("*.py") if "jscc" in p.read_text().lower()] == []


def test_ray_enters_calm_only_in_its_training_entry_points():
    """DESIGN.md section 1: the model library runs without Ray; only training on Ray, the runtime, and the
    training loop's progress bar inside a Ray worker import it."""
    users = sorted(p.stem for p in (ROOT / "calm").glob("*.py")
                   if any(isinstance(n, (ast.Import, ast.ImportFrom)) and "ray" in
                          ([a.name.split(".")[0] for a in n.names] if isinstance(n, ast.Import)
                           else [(n.module or "").split(".")[0]])
                          for n in ast.walk(ast.parse(p.read_text()))))
    assert set(users) <= {"train_ray", "ray_runtime", "train", "loop"}, users


# ------------------------------------------------------------------------------------------------------------
# each check fails on a planted fault


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "experiments" / "common").mkdir(exist_ok=True)
    (tmp_path / "experiments" / "common" / "__init__.py").write_text("")
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    return tmp_path


MAIN = 'if __name__ == "__main__":\n    pass\n'


def test_a_planted_circle_is_found(tmp_path):
    root = _tree(tmp_path, {"calm/a.py": "def f():\n    from calm import b\n", "calm/b.py": "import calm.a\n"})
    assert cycles(import_graph(root)) == [["calm.a", "calm.b"]]


def test_a_planted_study_to_study_import_is_found(tmp_path):
    root = _tree(tmp_path, {
        "experiments/common/sweep.py": "",
        "experiments/alpha.py": "from experiments.common.sweep import x\n" + MAIN,
        "experiments/alpha_report.py": "",
        "experiments/beta.py": "from experiments.alpha_report import y\n" + MAIN,
    })
    graph = import_graph(root)
    assert study_violations(root, graph) == [
        "experiments.beta -> experiments.alpha_report (a study imports another study)"]


def test_the_engine_importing_a_study_is_found(tmp_path):
    root = _tree(tmp_path, {"experiments/common/sweep.py": "from experiments import alpha\n",
                            "experiments/alpha.py": MAIN})
    assert study_violations(root, import_graph(root)) == [
        "experiments.common.sweep -> experiments.alpha (the engine imports a study)"]


def test_an_upward_import_is_found(tmp_path):
    root = _tree(tmp_path, {"protocols/p.py": "from agents.core import x\n", "agents/core.py": "",
                            "environments/e.py": "import calm.data\n", "calm/data.py": ""})
    assert layer_violations(import_graph(root)) == ["environments.e -> calm.data", "protocols.p -> agents.core"]


def test_a_long_experiment_file_is_found(tmp_path):
    root = _tree(tmp_path, {"experiments/alpha.py": "x = 1\n" * 401})
    assert long_files(root) == ["experiments/alpha.py: 401 lines"]
