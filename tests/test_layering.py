"""No upward imports: graph_passes/ and backends/ never import vdeploy's pipeline layers.

every .py under graph_passes/ and backends/ -> ast -> each `import vdeploy.X` / `from vdeploy.X import` (at any depth,
inside functions too) -> must be vdeploy.errors, vdeploy.graph_passes.*, or (backends only) vdeploy.backends.*
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "graph_passes": ("vdeploy.errors", "vdeploy.graph_passes"),
    "backends": ("vdeploy.errors", "vdeploy.graph_passes", "vdeploy.backends"),
}


def vdeploy_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import of a vdeploy module in the file; relative imports resolved to the package."""
    package = {"graph_passes": "vdeploy.graph_passes", "backends": "vdeploy.backends"}[path.relative_to(ROOT).parts[0]]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "vdeploy"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = (package + "." + ".".join(path.relative_to(ROOT).parts[1:-1])).rstrip(".").split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            if module.split(".")[0] == "vdeploy":
                found.append((node.lineno, module))
    return found


def allowed(module: str, layer: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in ALLOWED[layer])


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_upward_imports(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in vdeploy_imports(path)
        if not allowed(module, layer)
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_the_check_catches_an_upward_import():
    """The walker sees imports inside functions and relative ones (a check that cannot fail proves nothing)."""
    source = "def f():\n    from vdeploy.targets import OpId\n    import vdeploy.pipeline\n    from ..cli import app\n"
    found = [m for _, m in vdeploy_imports(ROOT / "graph_passes" / "rules" / "probe.py", source)]
    assert found == ["vdeploy.targets", "vdeploy.pipeline", "vdeploy.graph_passes.cli"]
    assert not any(allowed(m, "graph_passes") for m in found[:2])


MAX_LINES = 400  # the project's module size limit (ARCHITECTURE.md, "Style to follow")


def test_no_library_module_over_the_size_limit():
    files = [p for layer in ("deploy", "graph_passes", "backends") for p in sorted((ROOT / layer).rglob("*.py"))]
    assert len(files) > 50
    big = [f"{p.relative_to(ROOT)}: {n}" for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(big)
