"""The import contracts in pyproject.toml ([tool.importlinter], run by `lint-imports`) and the
AST rules of tests/test_layering.py state the same design card: they must not drift apart."""

from __future__ import annotations

import tomllib
from pathlib import Path

from test_layering import DEMO_WORLD_ALLOWED

ROOT = Path(__file__).resolve().parents[1]


def _contract(contract_id: str) -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    [contract] = [c for c in config["contracts"] if c.get("id") == contract_id]
    return contract


def test_demo_world_importers_match_the_layering_allowances():
    allowed = set(_contract("demo-world")["allowed_importers"]) - {"demo_world"}
    assert allowed == {rel.removesuffix(".py").replace("/", ".") for rel in DEMO_WORLD_ALLOWED}


def test_the_nightly_path_contract_covers_map_day():
    # map_day (tasks/mapping/day.py, wrapped by tasks/prefect_tasks.py) is where a nightly worker's imports start.
    sources = _contract("nightly-without-torch")["source_modules"]
    assert {"tasks.prefect_tasks", "tasks.mapping", "models.onnx_session", "tasks.archive"} <= set(sources)
    assert _contract("nightly-without-torch")["forbidden_modules"] == ["torch"]


def test_every_room_of_tasks_has_a_layer():
    # A room left out of the contract would be free to import any other: each package and module
    # directly under tasks/ must be named in one layer.
    named = {room.strip() for layer in _contract("tasks-layers")["layers"] for room in layer.split("|")}
    rooms = {f"tasks.{p.stem if p.is_file() else p.name}" for p in (ROOT / "tasks").iterdir()
             if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert rooms == named


def test_no_module_imports_itself_through_others():
    # The layers contracts compare rooms; a circle between two modules of one room (models/, a
    # room of tasks/) would pass them, so circles are looked for module by module.
    import grimp

    graph = grimp.build_graph("flows", "registry", "tasks", "models", "deployments", "demo_world")
    circles = [(m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m)
               if graph.chain_exists(importer=i, imported=m)]
    assert circles == []
