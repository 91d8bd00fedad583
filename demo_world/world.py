"""write_demo_world: a synthetic but plausible world in the real file formats, with its truth.

Layout under root:
  remote/oco2/oco2_LtCO2_YYMMDD_B11100Ar_<stamp>s.nc4   days with an overpass
  remote/oco3/oco3_LtCO2_YYMMDD_B10400Br_<stamp>s.nc4
  remote/gosat/YYYYMMDD-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-v7.3.nc
  remote/era5/era5_single_levels_YYYYMMDD.nc           start..end+1 (new-CDS ZIP layout)
  remote/static/{elevation,population,landcover}.tif, remote/static/ndvi/ndvi_YYYYDDD.tif
  truth/xco2_truth_YYYYMMDD.tif                         float32 ppm on the region's grid
  world.json                                            the manifest (DemoWorld)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import rasterio

from demo_world.covariates import write_static_covariates
from demo_world.layout import WorldLayout, truth_path
from demo_world.noise import stream_rng
from demo_world.sampling import (
    GOSAT_INSTRUMENT,
    OCO2_INSTRUMENT,
    OCO3_INSTRUMENT,
    Observer,
    drop_duplicate_ids,
    gosat_scene,
    oco2_scene,
    oco3_scene,
)
from demo_world.truth import TREND_PPM_PER_YEAR, TruthModel
from demo_world.weather import Weather
from tasks.io.atomic import atomic_path
from demo_world.writers.era5 import write_era5_zip
from tasks.io.geotiff import write_geotiff
from demo_world.writers.gosat_c3s import write_gosat_c3s
from demo_world.writers.oco_lite import write_oco_lite
from tasks.readers.names import era5_demo_name
from tasks.settings import Region

GENERATOR_VERSION = 1
DEFAULT_SEED = 20200601
Progress = Callable[[str, int, int], None]

# Files the generator owns: stale ones from an earlier world in the same root are removed.
_OWNED_PATTERNS = {
    "remote/oco2": "oco2_LtCO2_*.nc4", "remote/oco3": "oco3_LtCO2_*.nc4",
    "remote/gosat": "*-C3S-L2_GHG-GHG_PRODUCTS-TANSO-GOSAT-OCFP-DAILY-*.nc",
    "remote/era5": "era5_single_levels_*.nc", "remote/static/ndvi": "ndvi_*.tif",
    "truth": "xco2_truth_*.tif",
}


@dataclass
class DemoWorld:
    """The manifest of a generated world (world.json); paths are relative to `root`."""

    root: Path
    region: dict
    start: date
    end: date
    grid_step: float
    seed: int
    dense: bool
    gosat_bias: dict  # gosat = c0 + c1 * truth (+ noise)
    files: dict = field(default_factory=dict)
    soundings: dict = field(default_factory=dict)
    truth_grid: dict = field(default_factory=dict)
    truth_model: dict = field(default_factory=dict)
    generator_version: int = GENERATOR_VERSION

    @property
    def manifest_path(self) -> Path:
        return Path(self.root) / "world.json"

    def path(self, relative: str) -> Path:
        return Path(self.root) / relative

    def to_json(self) -> dict:
        d = asdict(self)
        d["root"] = str(self.root)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat()
        return d

    def save(self) -> Path:
        with atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=2))
        return self.manifest_path

    @classmethod
    def load(cls, root: Path | str) -> "DemoWorld":
        path = Path(root) / "world.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no demo world manifest (run write_demo_world)")
        d = json.loads(path.read_text())
        d["root"] = Path(root)
        d["start"] = date.fromisoformat(d["start"])
        d["end"] = date.fromisoformat(d["end"])
        return cls(**d)


def gosat_bias_coefficients(seed: int) -> tuple[float, float]:
    """GOSAT reads c0 + c1 * truth: slope 0.95-0.98 and +0.4..+1.0 ppm at 410 ppm."""
    u1, u2 = stream_rng(seed, "gosat.bias").random(2)
    c1 = 0.95 + 0.03 * u1
    bias_at_410 = 0.4 + 0.6 * u2
    return round(float(410.0 + bias_at_410 - c1 * 410.0), 4), round(float(c1), 5)


def write_demo_world(root: Path | str, region: Region, start: date, end: date,
                     grid_step: float = 0.01, seed: int = DEFAULT_SEED, dense: bool = False,
                     progress: Progress | None = None) -> DemoWorld:
    """Generate the world and return its manifest (also written to root/world.json).

    Deterministic for the arguments; a cell's truth on a day depends only on the seed, not on
    the region or window. `dense=True` (tests on tiny regions) adds an OCO-2 pass, an OCO-3
    snapshot map and a GOSAT point lattice over the region every day, thins the clouds and
    ignores the sun, so every day has soundings of all three sources in the region (the OCO-2
    pass cannot reach beyond ~82 degrees of latitude). `progress(step, done, total)` is called
    for "static covariates", "era5" and "days"."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if not 0 < grid_step <= 1:
        raise ValueError(f"grid_step {grid_step} must be in (0, 1] degrees")
    report = progress or (lambda *_: None)
    root = Path(root)
    layout = WorldLayout(root, region, start, end, grid_step)
    c0, c1 = gosat_bias_coefficients(seed)
    written: list[Path] = []

    statics = write_static_covariates(layout, seed, report)
    written += [statics.paths.elevation, statics.paths.population, statics.paths.landcover,
                *statics.paths.ndvi]
    weather = Weather(layout, seed, dense)
    truth_model = TruthModel(layout, seed, statics, weather)
    observer = Observer(weather, layout.cells, layout.grid, statics.elevation_m, (c0, c1),
                        dense, seed)

    era5_paths = []
    for i, day in enumerate(layout.era5_days):
        era5_paths.append(write_era5_zip(layout.source_dir("era5") / era5_demo_name(day),
                                         weather.hourly_era5(day)))
        report("era5", i + 1, len(layout.era5_days))

    box = layout.margin_box
    files: dict[str, list[Path]] = {"oco2": [], "oco3": [], "gosat": [], "truth": []}
    counts = {s: {"in_files": 0, "good_in_region": 0} for s in ("oco2", "oco3", "gosat")}
    rows, cols = layout.region_window
    for i, day in enumerate(layout.days):
        truth_cells = truth_model.for_day(day)
        files["truth"].append(write_geotiff(
            layout.truth_path(day), np.ascontiguousarray(truth_cells[rows, cols]),
            layout.grid.transform, units="ppm",
            tags={"day": day.isoformat(), "seed": seed, "quantity": "true XCO2 (ppm)"}))
        scenes = {
            "oco2": (oco2_scene(day, box, layout.grid, seed, dense), OCO2_INSTRUMENT),
            "oco3": (oco3_scene(day, box, layout.grid, seed, dense, statics.cities),
                     OCO3_INSTRUMENT),
            "gosat": (gosat_scene(day, box, layout.grid, seed, dense), GOSAT_INSTRUMENT),
        }
        for source, (scene, instrument) in scenes.items():
            if not len(scene):
                continue
            df = observer.soundings(scene, instrument, day, truth_cells)
            if source != "gosat":
                df = drop_duplicate_ids(df)
            if not len(df):
                continue
            target = layout.source_dir(source)
            target.mkdir(parents=True, exist_ok=True)
            if source == "gosat":
                path = write_gosat_c3s(target, df, xco2_units="1e-9", day=day)
            else:
                path = write_oco_lite(target, df, mission=source, day=day)
            files[source].append(path)
            counts[source]["in_files"] += len(df)
            good = (df["quality_flag"] == 0) & layout.grid.contains(
                df["latitude"].to_numpy(), df["longitude"].to_numpy())
            counts[source]["good_in_region"] += int(good.sum())
        report("days", i + 1, len(layout.days))

    written += era5_paths + [p for v in files.values() for p in v]
    _remove_stale(root, set(written))
    g = layout.grid
    world = DemoWorld(
        root=root, region=region.model_dump(), start=start, end=end, grid_step=grid_step,
        seed=seed, dense=dense, gosat_bias={"c0": c0, "c1": c1},
        files={
            **{k: [_rel(p, root) for p in v] for k, v in files.items()},
            "era5": [_rel(p, root) for p in era5_paths],
            "static": {"elevation": _rel(statics.paths.elevation, root),
                       "population": _rel(statics.paths.population, root),
                       "landcover": _rel(statics.paths.landcover, root),
                       "ndvi": [_rel(p, root) for p in statics.paths.ndvi]},
        },
        soundings=counts,
        truth_grid={"west": g.west, "south": g.south, "east": g.east, "north": g.north,
                    "step": g.step, "nx": g.nx, "ny": g.ny, "crs": "EPSG:4326"},
        truth_model={"trend_ppm_per_year": round(TREND_PPM_PER_YEAR, 4),
                     "anchor_box_means": {"terrain": round(truth_model.box.terrain, 4),
                                          "urban": round(truth_model.box.urban, 4)}},
    )
    world.save()
    return world


def _rel(path: Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def _remove_stale(root: Path, keep: set[Path]) -> None:
    keep = {Path(p).resolve() for p in keep}
    for folder, pattern in _OWNED_PATTERNS.items():
        for path in (root / folder).glob(pattern):
            if path.resolve() not in keep:
                path.unlink()


def truth_for_day(root: Path | str, day: date) -> np.ndarray:
    """The true XCO2 (ppm, float32, rows north to south) of `day` on the region's grid."""
    path = truth_path(Path(root), day)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no truth for {day} in this demo world")
    with rasterio.open(path) as src:
        return src.read(1)


def truth_at_cells(root: Path | str) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """truth(cells, days) -> the true XCO2 at those (cell index, day) pairs, one truth map read per
    day: the model comparison's truth scores on the demo world (models.comparison.TruthFunction)."""
    import pandas as pd

    def truth(cells: np.ndarray, days: np.ndarray | None) -> np.ndarray:
        if days is None:
            raise ValueError("the demo world's truth is per day: pass the samples' days")
        cells = np.asarray(cells, dtype=np.int64)
        days = pd.to_datetime(pd.Series(days)).dt.date.to_numpy()
        out = np.empty(len(cells))
        for day in np.unique(days):
            here = days == day
            out[here] = truth_for_day(root, day).ravel()[cells[here]]
        return out

    return truth
