"""The project as users get it (issue 10, case 8; issue 20, item 1), not as the developers' editable
venv with the test extras holds it.

- A wheel built from the working tree holds every subpackage and every data file the packages carry
  (STAC schemas, deployments, boundaries).
- `pip install -c constraints.txt <wheel>` (dependencies resolved, no extras, not editable) into a
  fresh venv that holds only the CPU torch: from a folder outside the checkout, every module imports
  from the installed copy, and `xco2 --help`, `xco2 sources check`, `xco2 config` and
  `xco2 demo --small` run. A module the code imports but `[project] dependencies` does not name
  fails here (shapely did); tests/test_declared_dependencies.py sees the same in `make test`.
- The image's own install: deployments/Dockerfile's COPY and `RUN pip install` lines, read from the
  Dockerfile and run as they are into a fresh venv, then every module imports and `xco2 --help`
  runs. One list of what the image installs, so the test cannot drift from it.

The installs reach the package registry. Its answers carry no cache headers here, so pip's cache
stays empty and every install would download the whole dependency tree again (about 6 min on two
cores); the module downloads it once into a wheelhouse that the installs find first (PIP_FIND_LINKS,
the same files the registry serves), and each install still resolves against the registry."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("flows", "tasks", "models", "registry", "deployments", "demo_world")
DOCKERFILE = REPO / "deployments" / "Dockerfile"
# The pin the Makefile and the Dockerfile install first; asserted against the Dockerfile below.
TORCH = "torch==2.13.0"


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


def _copy_project(files: list[str], dest: Path, source: str = "") -> None:
    """Copy the project's files into dest as Docker's COPY does: `source` a file, into dest; a folder
    (`flows/`), its contents into dest; '' (the default), the whole project."""
    source = source.rstrip("/")
    matched = [f for f in files if not source or f == source or f.startswith(source + "/")]
    assert matched, f"{source}: no such file or folder in the project"
    for f in matched:
        target = dest / (f if not source else Path(f).name if f == source else Path(f).relative_to(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / f).read_bytes())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (the build writes build/ and *.egg-info)."""
    src = tmp_path_factory.mktemp("src")
    _copy_project(_project_files(), src)
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


# --- installing as users do -------------------------------------------------------------------------

def _user_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without what points at the developers' setup: the project's
    settings (XCO2_*), Python's (PYTHON*, a venv), Prefect's and the real sources' credentials; HOME
    is a fresh folder, so no ~/.netrc, ~/.cdsapirc or ~/.prefect of ours is read."""
    dropped = ("XCO2_", "PYTHON", "PREFECT_", "MLFLOW_", "EARTHDATA_", "CDSAPI_", "VIRTUAL_ENV", "NETRC")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    home.mkdir(parents=True, exist_ok=True)
    return env | {"HOME": str(home)} | extra


def _pip_env(wheelhouse: Path, venv: Path) -> dict[str, str]:
    """The environment of a pip run: this machine's pip configuration (HOME kept: the registry's
    address is in ~/.config/pip), the venv's bin first on PATH, the module's wheelhouse found first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XCO2_", "PYTHON", "VIRTUAL_ENV"))}
    links = " ".join(filter(None, [str(wheelhouse), env.get("PIP_FIND_LINKS", "")]))
    return env | {"PIP_FIND_LINKS": links, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


def _run(cmd: list[str], timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _must(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheelhouse(wheel, tmp_path_factory) -> Path:
    """Every distribution the wheel and its postgres extra resolve to under constraints.txt,
    downloaded once for the module's installs (see the module's docstring)."""
    house = tmp_path_factory.mktemp("wheelhouse")
    _must(_run([sys.executable, "-m", "pip", "download", "-q", "-d", str(house), "-c", str(REPO / "constraints.txt"),
                f"xco2[postgres] @ {wheel.as_uri()}"], timeout=1200), "pip download")
    return house


def _fresh_venv(where: Path, wheelhouse: Path) -> Path:
    """`python -m venv` (with pip), then the CPU build of torch alone, as the Makefile installs it.
    pip must find the CPU build first (this machine's pip configuration serves it from disk): a CUDA
    build is GBs of libraries that neither the tests nor the image want."""
    venv = where / "venv"
    _must(_run([sys.executable, "-m", "venv", str(venv)], timeout=300), "python -m venv")
    _must(_run([str(venv / "bin" / "pip"), "install", "-q", TORCH], timeout=900,
               env=_pip_env(wheelhouse, venv)), f"pip install {TORCH}")
    cuda = _must(_run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.version.cuda)"],
                      timeout=300), "import torch").stdout.strip()
    assert cuda == "None", f"pip installed a CUDA build of torch (CUDA {cuda}); point pip at the CPU wheels"
    return venv


def _import_every_module(python: Path, root: Path, run: dict) -> str:
    """Import every module of the top packages with `python`; each must come from under `root` (the
    installed copy, not the checkout). Returns the probe's output."""
    probe = f"""
import importlib, pkgutil, sys
root = {str(root)!r}
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
        if not (getattr(module, "__file__", "") or "").startswith(root):
            foreign.append(f"{{name}} from {{module.__file__}}")
from tasks.archive.stac_validation import SCHEMA_DIR
assert any(SCHEMA_DIR.glob("*.json")), SCHEMA_DIR
print(count, "modules")
print("FAILED", failed)
print("FOREIGN", foreign)
sys.exit(1 if failed or foreign else 0)
"""
    imported = _run([str(python), "-c", probe], **run)
    _must(imported, "importing every module")
    count = int(imported.stdout.split(" modules")[0].split()[-1])
    assert count > 100, imported.stdout  # the walk really went through the packages
    return imported.stdout


# The wheelhouse's download, the installs and the demo's training: 10 to 15 min on two quiet cores,
# more on a busy machine, over the 900 s default.
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_plain_install_of_the_wheel_runs_the_commands_and_imports_every_module(wheel, wheelhouse, tmp_path):
    """A fresh venv, the CPU torch, then `pip install -c constraints.txt <wheel>`: what
    `pip install .` gives a user. Run from tmp_path, never the checkout."""
    venv = _fresh_venv(tmp_path, wheelhouse)
    _must(_run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"), str(wheel)],
               timeout=1200, env=_pip_env(wheelhouse, venv)), f"pip install {wheel.name}")
    python, xco2 = venv / "bin" / "python", venv / "bin" / "xco2"
    site = _must(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], timeout=60),
                 "sysconfig").stdout.strip()
    installed = _must(_run([str(venv / "bin" / "pip"), "list", "--format=json"], timeout=120), "pip list").stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert "shapely" in names and not names & {"pytest", "rioxarray", "odc-stac"}, "the test extra leaked in"

    data = tmp_path / "data"
    run = dict(cwd=tmp_path, env=_user_env(tmp_path / "home", XCO2_DATA_DIR=str(data)), timeout=600)

    helped = _must(_run([str(xco2), "--help"], **run), "xco2 --help")
    assert "daily" in helped.stdout and "demo" in helped.stdout and "sources" in helped.stdout

    # `sources check`: are the real sources' credentials there, and their archives reachable? None
    # is set here: exit 1, each source listed as not configured, each service's hint printed once.
    checked = _run([str(xco2), "sources", "check", "--json"], **run)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    statuses = json.loads(checked.stdout.strip().splitlines()[-1])
    assert {s["source"]: s["configured"] for s in statuses} == {"oco2": False, "oco3": False, "gosat": False,
                                                               "era5": False}
    assert "no NASA Earthdata credentials" in checked.stdout and "no Copernicus CDS credentials" in checked.stdout
    # With credentials in the environment and no probe (no network to the archives here): exit 0.
    creds = run | {"env": run["env"] | {"EARTHDATA_TOKEN": "t", "CDSAPI_URL": "https://cds.example/api",
                                         "CDSAPI_KEY": "k"}}
    configured = _must(_run([str(xco2), "sources", "check", "--no-probe", "--json"], **creds),
                       "xco2 sources check --no-probe")
    statuses = json.loads(configured.stdout.strip().splitlines()[-1])
    assert all(s["configured"] and s["reachable"] is None for s in statuses), statuses
    assert {s["credentials_from"] for s in statuses} == {"EARTHDATA_TOKEN", "CDSAPI_URL/CDSAPI_KEY"}

    config = json.loads(_must(_run([str(xco2), "config"], **run), "xco2 config").stdout)
    assert config["data_dir"] == str(data) and config["source"] == "demo"
    assert config["region"]["boundary"].startswith(site)  # the shipped boundary, read from the installed copy

    _import_every_module(python, Path(site), run)

    demo_dir = tmp_path / "d"
    demo = _must(_run([str(xco2), "demo", "--small", "--archive-days", "1", "--no-compare", "--data-dir",
                       str(demo_dir)], **(run | {"timeout": 1800})), "xco2 demo --small")
    assert "xco2 demo: summary" in demo.stdout and "summary written to" in demo.stdout
    summary = json.loads((demo_dir / "demo" / "summary.json").read_text())
    assert len(summary["archive_days"]) == 1 and summary["model"]["alias"] == "champion"
    cogs = list(Path(summary["archive_root"]).rglob("*.tif"))
    assert cogs, f"no map under {summary['archive_root']}"
    assert not (demo_dir / "quarantine").exists() or not any((demo_dir / "quarantine").rglob("*.*"))


# --- the image's own install ------------------------------------------------------------------------

def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            out.append((instruction.upper(), arguments.strip()))
    return out


def test_dockerfile_installs_the_project_with_pip_and_constraints():
    """What the slow test below relies on: the Dockerfile installs torch with the Makefile's pin, then
    the project with constraints.txt, and runs nothing else the test would have to imitate."""
    runs = [arguments for instruction, arguments in _dockerfile_instructions() if instruction == "RUN"]
    torch_lines = [r for r in runs if "torch==" in r]
    assert len(torch_lines) == 1 and TORCH in torch_lines[0], torch_lines
    project_lines = [r for r in runs if r.startswith("pip install -c constraints.txt ")]
    assert len(project_lines) == 1, runs
    assert set(runs) == set(torch_lines + project_lines), f"RUN lines the test cannot run: {runs}"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_dockerfile_install_line_in_a_fresh_venv_imports_every_module(wheelhouse, tmp_path):
    """deployments/Dockerfile played into a fresh venv: its COPY lines fill a folder standing for the
    WORKDIR (/app), its `RUN pip install` line for the project runs there as written (bash -c, the
    venv's pip first on PATH), its ENV applies (/app and /data mapped into tmp_path); then every
    module imports from that folder and `xco2 --help` runs. download.pytorch.org cannot be reached
    from here, so the torch line runs as `pip install torch==2.13.0`, which this machine's pip
    configuration serves as the CPU build from disk (the pin checked above)."""
    venv = _fresh_venv(tmp_path, wheelhouse)
    files = _project_files()
    app, data = tmp_path / "app", tmp_path / "data"  # stand for the WORKDIR and the data volume
    image_env: dict[str, str] = {}
    workdir = None
    ran_project_line = False
    for instruction, arguments in _dockerfile_instructions():
        if instruction == "WORKDIR":
            workdir = arguments
            app.mkdir()
        elif instruction == "ENV":
            image_env |= dict(pair.partition("=")[::2] for pair in shlex.split(arguments))
        elif instruction == "COPY":
            assert workdir is not None, "COPY before WORKDIR"
            *sources, dest = [a for a in shlex.split(arguments) if not a.startswith("--")]
            for source in sources:
                _copy_project(files, app / dest, source)
        elif instruction == "RUN" and "torch==" in arguments:
            continue  # installed by _fresh_venv, see the docstring
        elif instruction == "RUN":
            assert workdir is not None, "RUN before WORKDIR"
            env = _pip_env(wheelhouse, venv) | {k: v for k, v in image_env.items() if k.startswith("PIP_")}
            _must(_run(["bash", "-c", arguments], timeout=1200, cwd=app, env=env), f"the Dockerfile's RUN {arguments}")
            ran_project_line = True
    assert workdir is not None and ran_project_line

    def in_tmp(key: str, value: str) -> str:
        """The image's paths, here: the WORKDIR is `app`, the data volume a folder of tmp_path."""
        if key == "XCO2_DATA_DIR":
            return str(data)
        return str(app) + value[len(workdir):] if value == workdir or value.startswith(workdir + "/") else value

    image_env = {k: in_tmp(k, v) for k, v in image_env.items() if not k.startswith("PIP_")}
    run = dict(cwd=tmp_path, timeout=600,
               env=_user_env(tmp_path / "home", **image_env))
    assert run["env"]["XCO2_REPO"] == str(app) and run["env"]["XCO2_DATA_DIR"] == str(data)
    _import_every_module(venv / "bin" / "python", app, run)
    helped = _must(_run([str(venv / "bin" / "xco2"), "--help"], **run), "xco2 --help")
    assert "daily" in helped.stdout and "serve" in helped.stdout
    config = json.loads(_must(_run([str(venv / "bin" / "xco2"), "config"], **run), "xco2 config").stdout)
    assert config["data_dir"] == str(data)
    installed = _must(_run([str(venv / "bin" / "pip"), "list", "--format=json"], timeout=120), "pip list").stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"shapely", "psycopg"} <= names, "the postgres extra or a declared dependency is missing"
