"""Issue 10, case 8: the project works when installed from a wheel, not only as an editable
install. A wheel built from the working tree holds every subpackage and every data file the
packages carry (STAC schemas, deployments); installed (no editable finder) into a fresh venv,
`xco2 --help` runs and every module imports from the installed copy."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("flows", "tasks", "models", "registry", "deployments", "demo_world")


def _project_files() -> list[str]:
    """Tracked files and new ones not ignored: what a fresh clone (plus work in progress) holds."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _expected_members(files: list[str]) -> tuple[set[str], set[str]]:
    """(package directories, data files) the wheel must hold: every folder of the top packages with
    Python code in it (so a missing __init__.py shows too), and every other file in them."""
    packages, data = set(), set()
    for f in files:
        parts = Path(f).parts
        if parts[0] not in TOP_PACKAGES or "__pycache__" in parts:
            continue
        if f.endswith(".py"):
            packages.add(str(Path(f).parent.as_posix()))
        elif not f.endswith((".pyc", ".pyo")):
            data.add(f)
    return packages, data


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (the build writes build/ and *.egg-info)."""
    src = tmp_path_factory.mktemp("src")
    files = _project_files()
    for f in files:
        dest = src / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((REPO / f).read_bytes())
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools comes from the venv, so the check needs no network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(src)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("xco2-*.whl")
    return built


def test_wheel_holds_every_subpackage_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages, data = _expected_members(_project_files())
    for required in ("tasks/sources", "tasks/readers", "tasks/archive", "demo_world", "deployments"):
        assert required in packages
    missing_packages = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing_packages, f"subpackages not in {wheel.name}: {missing_packages}"
    missing_files = sorted(f for f in data if f not in names)
    assert not missing_files, f"data files not in {wheel.name}: {missing_files}"
    schemas = [n for n in names if n.startswith("tasks/archive/stac_schemas/") and n.endswith(".json")]
    assert len(schemas) >= 3
    assert not any(n.startswith("tests/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "xco2 = flows.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_and_imports_every_module(wheel, tmp_path):
    """`pip install --no-deps <wheel>` into a fresh venv whose dependencies are the project venv's
    (a .pth line adds its site-packages without running its .pth files, so the editable finder
    stays out), then `xco2 --help` and an import of every module, each from the installed copy."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XCO2_", "PYTHON"))}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # not the checkout
    helped = subprocess.run([str(venv / "bin" / "xco2"), "--help"], **run)
    assert helped.returncode == 0 and "daily" in helped.stdout, helped.stderr[-2000:]
    probe = f"""
import importlib, pkgutil, sys
site = {str(site)!r}
failed, foreign, count = [], [], 0
for top in {TOP_PACKAGES!r}:
    package = importlib.import_module(top)
    names = [top] + [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")]
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{{name}}: {{type(exc).__name__}}: {{exc}}")
            continue
        count += 1
        if not (getattr(module, "__file__", "") or "").startswith(site):
            foreign.append(f"{{name}} from {{module.__file__}}")
from tasks.archive.stac_validation import SCHEMA_DIR
assert any(SCHEMA_DIR.glob("*.json")), SCHEMA_DIR
print(count, "modules")
print("FAILED", failed)
print("FOREIGN", foreign)
sys.exit(1 if failed or foreign else 0)
"""
    imported = subprocess.run([str(python), "-c", probe], **run)
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]
