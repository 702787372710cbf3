"""The package's layout: no import cycle, and the queue's name spelled in one module only.

Read from the source with `ast`, nothing imported: fast, and a cycle hidden behind
`if TYPE_CHECKING:` or inside a function counts too (it is still two modules that each
need the other).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mqlab
from mqlab.protocol import keys

PACKAGE = Path(mqlab.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` steps up
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from a import b` imports the module a.b when there is one, else a.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "mqlab.protocol.keys" in graph["mqlab.system.worker"]  # the graph sees imports at all
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_find_cycle_finds_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_queue_is_named_in_one_module() -> None:
    naming = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if keys.QUEUE in path.read_text()
    )
    assert naming == ["mqlab/protocol/keys.py"]


def test_the_protocol_imports_nothing_else_of_mqlab() -> None:
    """Every part imports the protocol, so the protocol imports none of them (but the
    backend errors): no cycle can go through it."""
    graph = import_graph()
    allowed = {name for name in graph if name.startswith("mqlab.protocol")}
    allowed.add("mqlab.backend_errors")
    for name in allowed:
        assert graph[name] <= allowed, f"{name} imports {sorted(graph[name] - allowed)}"


#: The data and the figures: a run's results, its ledger, the report, the timelines, the
#: tables and statistics, the progress a front end draws, and the TUI's frame of them.
FIGURES = ("mqlab.figures", "mqlab.faces.tui.model")
#: What starts, signals or stops processes (and the servers they run).
PROCESS_CONTROL = (
    "mqlab.procs", "mqlab.lab.supervisor", "mqlab.lab.scenarios", "mqlab.lab.stack",
    "mqlab.lab.runner", "mqlab.lab.faulty_run", "mqlab.lab.environment", "mqlab.lab.services",
    "mqlab.system.worker", "mqlab.faces.tui.lab",
)  # fmt: skip


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for name in graph[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_figures_import_nothing_that_starts_or_signals_processes() -> None:
    """The ledger imported scenarios (for Marks) and the TUI's frame the runner (for its
    progress type): the figures were a layer above process control, not beside it."""
    graph = import_graph()
    for name in (m for m in graph if _under(m, FIGURES)):
        control = sorted(m for m in reach(graph, name) if _under(m, PROCESS_CONTROL))
        assert not control, f"{name} reaches {control}"


#: The layers, lowest first: a module imports its own layer and the ones below, never one
#: above. The faces drive the lab, the lab reports through the figures, the figures read the
#: experiments' definitions and the system's pure parts (the retry policy), and the system
#: stands on what every part shares: settings, errors, the protocol, the database.
LAYERS = (
    ("shared", ("mqlab.settings", "mqlab.backend_errors", "mqlab.private_files", "mqlab.procs",
                "mqlab.protocol", "mqlab.db")),
    ("system", ("mqlab.system",)),
    ("experiments", ("mqlab.experiments",)),
    ("figures", ("mqlab.figures",)),
    ("lab", ("mqlab.lab",)),
    ("faces", ("mqlab.faces", "mqlab.__main__")),
)  # fmt: skip


def layer_of(name: str) -> int:
    if name == "mqlab":  # the package itself: its version
        return 0
    for index, (_, prefixes) in enumerate(LAYERS):
        if _under(name, prefixes):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    upward = sorted(
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    )
    assert not upward, "\n".join(upward)


def test_the_top_level_holds_the_parts_and_what_they_share() -> None:
    """A newcomer sees the architecture in `ls mqlab`: four parts and a few shared modules."""
    top = sorted(
        p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    )
    assert {"system", "lab", "figures", "faces"} <= set(top)
    assert len([t for t in top if not t.startswith("__")]) <= 12, top


def test_layers_catch_an_upward_import() -> None:
    assert (
        layer_of("mqlab.system.worker") < layer_of("mqlab.lab.runner") < layer_of("mqlab.faces.cli")
    )
    assert layer_of("mqlab.db") == 0
