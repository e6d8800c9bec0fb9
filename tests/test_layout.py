"""The package's shape: no module over 600 lines, no import cycle between its modules (top-level imports: the
ones that run at import time; an import inside a function is deliberate laziness and is not counted)."""

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


def _top_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in tree.body:  # module level only
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


def test_no_module_is_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, long


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {n: _top_level_imports(n, p, modules) for n, p in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle with them: drop edges parent -> child
    graph = {n: {m for m in deps if not m.startswith(n + ".")} for n, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, cycles


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
