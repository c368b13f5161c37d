"""Imports point down: the pure layers reach no I/O, event loop or clock, directly or through the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "voicebridge"
FORBIDDEN = frozenset({"trio", "quart", "quart_trio", "hypercorn", "trio_websocket", "sqlite3", "httpx", "time", "psycopg", "psycopg_pool",
                       "socket"})
PURE_FOLDERS = ("edges/protocol", "jobs")
PURE_FILES = ("engine/playout.py", "engine/flow.py", "engine/effects.py", "engine/prompts.py")
DYNAMIC_IMPORTERS = frozenset({"import_module", "__import__"})


def module_name(path: Path, package_dir: Path) -> str:
    """`voicebridge/protocol/realtime.py` -> `voicebridge.edges.protocol.realtime` (packages drop `__init__`)."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Absolute names of every module `source` may import: statements anywhere, plus constant dynamic imports."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in DYNAMIC_IMPORTERS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def internal_file(name: str, package_dir: Path) -> Path | None:
    """The file a `voicebridge.x.y` name executes, or None (an attribute, or outside the package)."""
    parts = name.split(".")
    if parts[0] != package_dir.name:
        return None
    target = package_dir.joinpath(*parts[1:])
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def parents_of(path: Path, package_dir: Path) -> list[Path]:
    """The `__init__.py` files Python runs before `path` (the package and every sub-package on the way)."""
    inits, folder = [], path.parent
    while folder == package_dir or package_dir in folder.parents:
        init = folder / "__init__.py"
        if init.is_file() and init != path:
            inits.append(init)
        folder = folder.parent
    return inits


def forbidden_chains(start: Path, package_dir: Path) -> list[str]:
    """Every forbidden import reachable from `start`, as `file -> file -> module` chains."""
    found: list[str] = []
    seen: set[Path] = set()
    queue: list[tuple[Path, tuple[str, ...]]] = [(start, ())]
    while queue:
        path, via = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        chain = via + (str(path.relative_to(package_dir.parent)),)
        name = module_name(path, package_dir)
        names = imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        for imported in sorted(names):
            if imported.split(".")[0] in FORBIDDEN:
                found.append(" -> ".join(chain + (imported,)))
            target = internal_file(imported, package_dir)
            if target is not None:
                queue.append((target, chain))
                queue.extend((init, chain) for init in parents_of(target, package_dir))
        queue.extend((init, chain) for init in parents_of(path, package_dir))
    return found


def pure_modules(package_dir: Path) -> list[Path]:
    """The pure layer as it stands: every file under edges/protocol/ and jobs/, and the named pure modules."""
    found = [p for folder in PURE_FOLDERS for p in sorted((package_dir / folder).rglob("*.py"))]
    return found + [package_dir / name for name in PURE_FILES]


@pytest.mark.parametrize("path", pure_modules(PACKAGE_DIR), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_pure_module_imports_no_io_loop_or_clock(path: Path) -> None:
    """The module, and everything it pulls in from the package, imports no trio, web, sqlite, httpx, time or socket."""
    if not path.is_file():
        pytest.skip(f"{path.name} does not exist yet")
    assert forbidden_chains(path, PACKAGE_DIR) == []


def test_the_protocol_layer_is_actually_scanned() -> None:
    """The globbing finds the protocol modules, so an empty scan cannot pass silently."""
    names = {p.name for p in pure_modules(PACKAGE_DIR) if p.is_file()}
    assert {"twilio_media.py", "realtime.py", "_codec.py", "errors.py"} <= names


def _write(root: Path, relative: str, source: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    return path


def test_checker_catches_every_import_form(tmp_path: Path) -> None:
    """Plain, dotted, aliased, from-, star-, nested and dynamic imports of forbidden modules are all caught."""
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "")
    _write(package, "protocol/__init__.py", "")
    path = _write(package, "protocol/bad.py", "\n".join([
        "import trio",
        "import trio_websocket.impl as tw",
        "from time import monotonic",
        "from socket import *",
        "import os, sqlite3",
        "import psycopg",
        "from psycopg_pool import ConnectionPool",
        "def later():",
        "    import httpx",
        "    from quart_trio import QuartTrio",
        "    importlib.import_module('hypercorn.trio')",
        "    __import__('quart')",
    ]))
    found = {chain.rsplit(" -> ", 1)[1].split(".")[0] for chain in forbidden_chains(path, package)}
    assert found == FORBIDDEN


def test_checker_allows_lookalike_names(tmp_path: Path) -> None:
    """`timeit`, `datetime`, `trio_util`-style names and a local `time` attribute are not the forbidden modules."""
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "")
    path = _write(package, "flow.py", "\n".join([
        "import timeit",
        "from datetime import datetime, timezone",
        "import sockets_helper",
        "import trio_util",
        "from .clock import time",
        "x = datetime.now(timezone.utc).time()",
    ]))
    _write(package, "clock.py", "def time() -> float:\n    return 0.0\n")
    assert forbidden_chains(path, package) == []


def test_checker_follows_imports_through_the_package(tmp_path: Path) -> None:
    """A pure module that imports a package module which imports trio is caught, with the chain named."""
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "")
    _write(package, "protocol/__init__.py", "")
    _write(package, "session.py", "import trio\n")
    path = _write(package, "protocol/uses_session.py", "from ..session import run_call\n")
    assert forbidden_chains(path, package) == [
        "voicebridge/protocol/uses_session.py -> voicebridge/session.py -> trio"]


def test_checker_follows_package_init_files(tmp_path: Path) -> None:
    """A forbidden import in a package `__init__` counts: importing a submodule runs it."""
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "from . import web\n")
    _write(package, "web.py", "import quart\n")
    _write(package, "domain/__init__.py", "")
    path = _write(package, "domain/menu.py", "import attrs\n")
    chains = forbidden_chains(path, package)
    assert chains and all(chain.endswith("-> quart") for chain in chains)


# -- the direction of the whole tree ------------------------------------------------------


def module_graph(package_dir: Path) -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports, in any form (type-only too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        name = module_name(path, package_dir)
        targets: set[str] = set()
        for imported in imported_names(path.read_text(encoding="utf-8"), name, path.name == "__init__.py"):
            target = internal_file(imported, package_dir)
            if target is not None and target != path:
                targets.add(module_name(target, package_dir))
        graph[name] = targets
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for nxt in graph.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def rule_breaks(graph: dict[str, set[str]]) -> list[str]:
    """The tree's direction: engine -> no job; nothing -> cli; only the CLI (and peers) -> peers."""
    breaks = []
    for module, targets in sorted(graph.items()):
        if module.startswith("voicebridge.engine"):
            breaks += [f"{module} reaches the job {t}" for t in sorted(reachable(graph, module))
                       if t.startswith("voicebridge.jobs")]
        breaks += [f"{module} imports the CLI" for t in targets
                   if t == "voicebridge.cli" and module != "voicebridge.__main__"]
        cli_side = module in ("voicebridge.cli",) or module.startswith(("voicebridge.commands", "voicebridge.peers"))
        breaks += [f"{module} imports the local peers ({t})" for t in sorted(targets)
                   if t.startswith("voicebridge.peers") and not cli_side]
    return breaks


def test_the_tree_keeps_its_direction() -> None:
    """The engine reaches no job, nothing imports the CLI, only the CLI imports the local peers."""
    assert rule_breaks(module_graph(PACKAGE_DIR)) == []


def test_no_import_cycle_not_even_type_only() -> None:
    assert cycles(module_graph(PACKAGE_DIR)) == []


def test_the_graph_is_really_read() -> None:
    """The scan sees the package's real edges, so an empty graph cannot pass silently."""
    graph = module_graph(PACKAGE_DIR)
    assert "voicebridge.engine.job" in graph["voicebridge.jobs.pizza.job"]
    assert "voicebridge.engine.session" in graph["voicebridge.daemon"]


def test_checkers_catch_cycles_and_wrong_directions(tmp_path: Path) -> None:
    """A type-only cycle, an engine module reaching a job, a module importing the CLI or the peers: all caught."""
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "")
    _write(package, "cli.py", "from voicebridge.peers import demo\n")
    _write(package, "peers/__init__.py", "")
    _write(package, "peers/demo.py", "")
    _write(package, "engine/__init__.py", "")
    _write(package, "engine/flow.py", "from voicebridge.engine import helper\n")
    _write(package, "engine/helper.py", "from voicebridge.jobs.pizza import menu\n")
    _write(package, "jobs/__init__.py", "")
    _write(package, "jobs/pizza/__init__.py", "")
    _write(package, "jobs/pizza/menu.py", "")
    _write(package, "web.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from voicebridge.daemon import D\n")
    _write(package, "daemon.py", "from voicebridge import web\nfrom voicebridge.cli import main\n"
                                 "from voicebridge.peers.demo import run\n")
    graph = module_graph(package)
    assert cycles(graph) == [["voicebridge.daemon", "voicebridge.web"]]
    breaks = rule_breaks(graph)
    assert "voicebridge.engine.flow reaches the job voicebridge.jobs.pizza.menu" in breaks
    assert "voicebridge.engine.helper reaches the job voicebridge.jobs.pizza.menu" in breaks
    assert "voicebridge.daemon imports the CLI" in breaks
    assert "voicebridge.daemon imports the local peers (voicebridge.peers.demo)" in breaks
    assert not any(b.startswith("voicebridge.cli") for b in breaks)


LONG_MODULE_LINES = 500


def long_modules_without_a_reason(package_dir: Path) -> list[str]:
    """Modules over LONG_MODULE_LINES lines whose opening docstring does not say why they are long."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") <= LONG_MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "why" not in doc.lower() or "long" not in doc.lower() and "length" not in doc.lower():
            found.append(str(path.relative_to(package_dir.parent)))
    return found


def test_a_long_module_says_why_in_its_opening_comment() -> None:
    assert long_modules_without_a_reason(PACKAGE_DIR) == []


def test_the_length_check_is_real(tmp_path: Path) -> None:
    package = tmp_path / "voicebridge"
    _write(package, "__init__.py", "")
    _write(package, "big.py", '"""A big module."""\n' + "x = 1\n" * (LONG_MODULE_LINES + 1))
    _write(package, "big_ok.py", '"""A big module.\n\nWhy this module is long: one table of data."""\n'
           + "x = 1\n" * (LONG_MODULE_LINES + 1))
    assert long_modules_without_a_reason(package) == ["voicebridge/big.py"]
