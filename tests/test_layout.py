"""The tree a newcomer reads: one concern per module in hw4/, jobs/ and serve/, each at most 300
lines and saying on its first line what it holds; imports flow bench -> jobs -> serve -> hw4,
with no cycles."""

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

LAYERS = ["hw4", "serve", "jobs", "bench"]  # each may import only itself and the ones before it


def project_imports(path: Path) -> set[str]:
    """Modules of the project that ``path`` imports (``jobs.cli``, ``hw4``, ...), anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in LAYERS}


def modules(package: str) -> dict[str, Path]:
    return {f"{package}.{p.stem}": p for p in sorted((ROOT / package).glob("*.py"))
            if p.stem != "__init__"}


SHORT = sorted([*(ROOT / "jobs").glob("*.py"), *(ROOT / "serve").glob("*.py"),
                *(ROOT / "hw4").rglob("*.py")])


@pytest.mark.parametrize("path", SHORT, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_short_and_say_what_they_hold(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 300, f"{path.name}: {len(text.splitlines())} lines"
    assert not text or (text.startswith('"""') and len(text.splitlines()[0].strip('"')) > 20), \
        f"{path.name}: no first-line docstring"


def test_imports_flow_down_the_layers_without_cycles():
    graph: dict[str, set[str]] = {}
    for layer in LAYERS:
        for name, path in modules(layer).items():
            imported = project_imports(path)
            allowed = LAYERS[:LAYERS.index(layer) + 1]
            upward = sorted(m for m in imported if m.split(".")[0] not in allowed)
            assert not upward, f"{name} imports {upward}: {layer} may import only {allowed}"
            graph[name] = {m for m in imported if m in modules(m.split(".")[0])} - {name}
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(stack + [node, nxt])}"
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])
