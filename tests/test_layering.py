"""The import rules of the design card, read from the source (every import, top level or inside
a function): flows -> registry -> models, flows -> tasks; nothing imports flows; tasks and models
never import registry; production code never imports the demo world."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("flows", "tasks", "models", "registry", "deployments")

# Demo-world imports that are the demo itself (`xco2 demo`, `xco2 past-window` score against its
# truth) or known debt that issue 13 moves out of the flows: each names why.
DEMO_WORLD_ALLOWED = {
    "flows/demo.py": "the demo: writes the demo world and scores against its truth",
    "flows/cli.py": "`xco2 past-window` scores the demo world's truth",
    "flows/retrain.py": "on the demo, the model comparison is also scored against the demo world's truth (comparison_truth)",
    "tasks/analysis/real_benchmark_io.py": "the real-value benchmark writes real retrievals with the demo's real-format writers",
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _modules(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def _violations(files: list[Path], forbidden: tuple[str, ...], allowed: dict[str, str] | None = None) -> list[str]:
    found = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        if allowed and rel in allowed:
            continue
        for line, module in _imports(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{rel}:{line} imports {module}")
    return found


def test_nothing_imports_flows():
    assert _violations(_modules("tasks", "models", "registry", "deployments", "demo_world"), ("flows",)) == []


def test_tasks_and_models_never_import_registry():
    assert _violations(_modules("tasks", "models"), ("registry",)) == []


def test_models_never_import_tasks_of_the_pipeline_or_prefect_flows():
    # models/ takes plain arguments: it is trained and evaluated without the pipeline around it.
    assert _violations(_modules("models"), ("flows", "registry", "tasks.sources", "tasks.archive")) == []


def test_production_never_imports_the_demo_world():
    production = [p for p in _modules(*PRODUCTION) if "demo_world" not in p.parts]
    assert _violations(production, ("demo_world",), DEMO_WORLD_ALLOWED) == []


@pytest.mark.parametrize("rel", sorted(DEMO_WORLD_ALLOWED))
def test_each_allowed_demo_import_still_exists(rel):
    # An allowance whose import is gone must go too, or it would hide a new one.
    assert any(m.startswith("demo_world") for _, m in _imports(ROOT / rel)), rel


def test_the_rules_see_imports_inside_functions(tmp_path):
    module = tmp_path / "late.py"
    module.write_text("def f():\n    from registry.champion import load_champion\n")
    assert _violations([module], ("registry",)) == [f"{module}:2 imports registry.champion"]
