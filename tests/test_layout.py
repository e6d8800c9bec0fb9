"""The package's shape: no module over 600 lines; no import cycle between its modules, nor between its packages.

Every import counts: those at module level and those inside functions (a deferred import only postpones a cycle to
the first call; it does not remove the dependency). Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``
first, so a package's ``__init__`` importing its own submodules is an edge like any other, and a submodule that
imports from its package's ``__init__`` closes a cycle."""

import ast
from pathlib import Path

import drorae

PACKAGE = Path(drorae.__file__).parent
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source (module level, functions, classes)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.add(full if full in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {n: _imports(n, p, modules) for n, p in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _package_graphs(graph: dict[str, set[str]], packages: set[str]) -> dict[str, dict[str, set[str]]]:
    """For every package, the graph between its direct children (modules and subpackages): ``a -> b`` when some
    module inside ``a`` imports some module inside ``b``."""
    out = {}
    for package in sorted(packages):
        depth = package.count(".") + 2

        def child(module, depth=depth):
            return ".".join(module.split(".")[:depth])

        inside = [m for m in graph if m.startswith(package + ".")]
        out[package] = {child(m): set() for m in inside}
        for m in inside:
            for dep in graph[m]:
                if dep.startswith(package + ".") and child(dep) != child(m):
                    out[package][child(m)].add(child(dep))
    return out


def test_no_module_is_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, long


def test_deferred_imports_are_counted():
    """The graph sees an import inside a function (``cli`` imports the commands' modules lazily)."""
    graph = _import_graph()
    assert "drorae.studies.sweeps" in graph["drorae.cli.tokenizer"]  # only imported inside the command functions
    assert "drorae.engine.distributed" in graph["drorae.evaluation.reconstruction"]


def test_the_import_graph_has_no_cycle():
    graph = _import_graph()
    assert not _cycles(graph), _cycles(graph)


def test_the_package_graph_has_no_cycle():
    """Within every package, its subpackages and modules depend on each other one way only (e.g. ``evaluation``
    uses ``tokenizer``, so nothing in ``tokenizer`` may use ``evaluation``: the studies that need both sit in
    ``drorae.studies``)."""
    packages = {n for n, p in _modules().items() if p.name == "__init__.py"}
    graphs = _package_graphs(_import_graph(), packages)
    assert {"drorae.tokenizer", "drorae.evaluation", "drorae.studies"} <= set(graphs["drorae"])
    assert "drorae.tokenizer" in graphs["drorae"]["drorae.evaluation"]
    found = {package: _cycles(g) for package, g in graphs.items()}
    assert not {p: c for p, c in found.items() if c}, found


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert not _cycles({"a": {"b"}, "b": {"c"}, "c": set()})
    graph = {"p.x.m": {"p.y.n"}, "p.y.n": {"p.x.k"}, "p.x.k": set()}  # modules acyclic, packages x <-> y not
    assert not _cycles(graph)
    packages = _package_graphs(graph, {"p", "p.x", "p.y"})
    assert packages["p"] == {"p.x": {"p.y"}, "p.y": {"p.x"}}
    assert _cycles(packages["p"]) == [["p.x", "p.y", "p.x"]]


def test_links_in_the_readme_and_docs_resolve():
    import re

    root = PACKAGE.parents[1]
    pages = [root / "README.md", root / "tests" / "README.md", root / "benchmarks" / "README.md"]
    pages += sorted((root / "docs").rglob("*.md"))
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(root)}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.+)$", file.read_text())
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                if anchor not in slugs:
                    broken.append(f"{page.relative_to(root)}: {target} (no such heading)")
    assert not broken, broken


def test_the_readme_python_example_imports_from_the_public_api():
    """The landing page's code imports what the package exports (run without its hub backbone)."""
    import re

    root = PACKAGE.parents[1]
    block = re.search(r"```python\n(.*?)```", (root / "README.md").read_text(), flags=re.S).group(1)
    imports = "\n".join(line for line in block.splitlines() if line.startswith(("import ", "from ")))
    assert "from drorae import" in imports
    exec(compile(imports, "README.md", "exec"), {})
