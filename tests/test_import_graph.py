"""The package's imports form no cycle, counting imports made inside functions too (a lazy
import that closes a cycle only hides it), and leaving out ``if TYPE_CHECKING:`` blocks,
which never run. The Router is the one module that decides where an attempt goes: no other
layer imports the health registry to decide with it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llm_proxy_mw"


def module_files() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    """Every module an AST imports at run time, resolved to absolute names."""

    def __init__(self, name: str, is_package: bool) -> None:
        self.package = name.split(".") if is_package else name.split(".")[:-1]
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package[: len(self.package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        self.names.add(module)
        # ``from package import module`` imports that module too.
        self.names.update(f"{module}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph = {}
    for name, path in files.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[name] = {m for m in visitor.names if m in files and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_package_imports_no_cycle() -> None:
    assert cycles(import_graph()) == []


def drawn_imports() -> dict[str, set[str]]:
    """The import drawing of ``docs/architecture.md``: ``module -> a, b`` lines."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawing = text.partition("## The import drawing")[2].split("```")[1]
    drawn = {}
    for line in drawing.strip().splitlines():
        name, _, imports = line.partition("->")
        drawn[name.strip()] = {part.strip() for part in imports.split(",") if part.strip()}
    return drawn


def test_the_docs_import_drawing_is_the_code() -> None:
    graph, drawn = import_graph(), drawn_imports()
    for name, imports in drawn.items():
        real = {m.removeprefix("llm_proxy_mw.") for m in graph[f"llm_proxy_mw.{name}"]}
        # Every import drawn is real, and every import of a drawn module among drawn
        # modules is drawn (a module may also import ones the drawing leaves out: config).
        assert imports <= real, name
        assert real & drawn.keys() <= imports, name


def test_only_the_router_and_the_stack_builder_import_the_health_registry() -> None:
    # Health is fed and read where routing decides (the Router's plan); the builder makes the
    # registry, the endpoints and metrics report it. Retry and Upstream never decide with it.
    graph = import_graph()
    deciders = {name for name, imported in graph.items() if "llm_proxy_mw.health" in imported}
    assert "llm_proxy_mw.retry" not in deciders
    assert "llm_proxy_mw.upstream" not in deciders
    assert "llm_proxy_mw.routing" in deciders
