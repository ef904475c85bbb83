"""The package's layers: imports point down. Every import counts, function-level ones too."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "entropix_mlx"
FRONTS = (
    "cli",
    "server",
    "scheduler",
    "evaluation",
    "calibrate",
    "bench",
    "trace",
    "plot",
    "frontier_plot",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set:
    """The entropix_mlx modules `path` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("entropix_mlx")}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (
                (base + "." + node.module if node.module else base) if node.level else node.module
            )
            if not target or not target.startswith("entropix_mlx"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {m for m in found if m != name}


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def reaches(start: str, graph=GRAPH) -> set:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            target = target if target in graph else target.rpartition(".")[0]
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_walk_sees_function_level_imports():
    assert "entropix_mlx.engine.batch" in GRAPH["entropix_mlx.generate"]
    assert any(m.startswith("entropix_mlx.loading") for m in reaches("entropix_mlx.cli"))


def test_no_module_imports_itself_through_others():
    cycles = [m for m in GRAPH if m in reaches(m)]
    assert not cycles, f"import cycles through: {sorted(cycles)}"


def test_the_engine_never_imports_the_api_or_a_front():
    engine = [m for m in GRAPH if m.startswith("entropix_mlx.engine")]
    above = ("entropix_mlx.generate",) + tuple(f"entropix_mlx.{f}" for f in FRONTS)
    for module in engine:
        bad = [t for t in GRAPH[module] if t.startswith(above)]
        assert not bad, f"{module} imports {bad}"


def test_model_sampling_and_loading_never_import_generation():
    generation = ("entropix_mlx.engine", "entropix_mlx.generate") + tuple(
        f"entropix_mlx.{f}" for f in FRONTS
    )
    for module, targets in GRAPH.items():
        if module.startswith(
            ("entropix_mlx.model", "entropix_mlx.sampling", "entropix_mlx.loading")
        ):
            bad = [t for t in targets if t.startswith(generation)]
            assert not bad, f"{module} imports {bad}"
