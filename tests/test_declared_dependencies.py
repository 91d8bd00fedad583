"""Issue 20, item 1: every third-party module the production code imports comes from a distribution
that `[project] dependencies` names directly. A module that only arrives as a dependency of a
dependency, or of the `test` extra (shapely did, through rioxarray and odc-stac), works in the
developers' venv and fails in `pip install .` and in the image; this check sees it in `make test`,
without building anything. tests/faults/test_packaging_wheel.py installs the wheel as a user does.

Every import counts, those inside functions and under `if TYPE_CHECKING:` too (the CLI imports most
of its commands' modules lazily)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("flows", "tasks", "models", "registry", "deployments", "demo_world")


def _canonical(name: str) -> str:
    """PEP 503 normalisation: `PyYAML`, `pyyaml` and `py_yaml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """{canonical name: requirement} of `[project] dependencies` (the extras are not what a plain
    install gets)."""
    requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = {}
    for requirement in requirements:
        name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        assert name, f"{pyproject}: cannot read a distribution name in {requirement!r}"
        out[_canonical(name.group(1))] = requirement
    return out


def production_imports(root: Path = REPO) -> dict[str, set[str]]:
    """{top-level module name: files importing it} over every module of the production packages,
    relative imports and the project's own packages left out."""
    found: dict[str, set[str]] = {}
    for top in TOP_PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    first = name.split(".")[0]
                    if first not in TOP_PACKAGES:
                        found.setdefault(first, set()).add(relative)
    return found


def undeclared_imports(imports: dict[str, set[str]], declared: set[str],
                       distributions: dict[str, list[str]]) -> list[str]:
    """One line per third-party module that no declared distribution provides: the module, the files
    importing it and the distribution(s) to declare. `distributions` is
    importlib.metadata.packages_distributions() (a module may come from several, e.g. mlflow from
    mlflow and mlflow-skinny: one of them declared is enough)."""
    problems = []
    for module, files in sorted(imports.items()):
        if module in sys.stdlib_module_names:
            continue
        providers = distributions.get(module)
        shown = sorted(files)
        where = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        if not providers:
            problems.append(f"{module} (imported by {where}) is installed by no distribution in this venv: "
                            "add the one that provides it to [project] dependencies and constraints.txt")
        elif not {_canonical(p) for p in providers} & declared:
            problems.append(f"{module} (imported by {where}) comes from {' or '.join(sorted(set(providers)))}, "
                            "which [project] dependencies in pyproject.toml does not name")
    return problems


def test_every_production_import_is_a_declared_dependency():
    problems = undeclared_imports(production_imports(), set(declared_distributions()),
                                  importlib.metadata.packages_distributions())
    assert not problems, "\n".join(problems)


def test_the_check_names_the_module_and_distribution_left_out():
    """The check itself: with shapely taken out of the declared list, the region boundaries that
    import it are reported, with the distribution to add."""
    declared = set(declared_distributions()) - {"shapely"}
    problems = undeclared_imports(production_imports(), declared, importlib.metadata.packages_distributions())
    assert len(problems) == 1, problems
    assert problems[0].startswith("shapely (imported by ")
    assert "tasks/regions/boundary.py" in problems[0] and "comes from shapely" in problems[0]


def test_the_check_reads_imports_inside_functions(tmp_path):
    """A lazy import (how the CLI keeps torch off its start-up) counts as much as a top-level one."""
    module = tmp_path / "tasks" / "lazy.py"
    module.parent.mkdir()
    module.write_text("def load():\n    import yaml\n    from shapely.geometry import box\n    from . import sibling\n")
    assert production_imports(tmp_path) == {"yaml": {"tasks/lazy.py"}, "shapely": {"tasks/lazy.py"}}


@pytest.mark.parametrize("distribution", sorted(declared_distributions()))
def test_declared_dependency_has_a_lower_bound_and_a_pin(distribution):
    """A lower bound in pyproject.toml (what the code needs) and the exact tested version in
    constraints.txt (what the Makefile, the image and the packaging tests install)."""
    requirement = declared_distributions()[distribution]
    assert re.search(r">=|==|~=", requirement), f"pyproject.toml: {requirement!r} has no lower bound"
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    assert distribution in pins, f"constraints.txt pins no exact version of {distribution} ({requirement!r})"
