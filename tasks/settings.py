"""One typed settings object for the whole system.

Values come from `XCO2_*` environment variables, then an optional TOML file (`XCO2_CONFIG` or
`./xco2.toml`), then the defaults below. An invalid value stops the command with a message
that names the setting. Configuration is strict: an `XCO2_*` variable or TOML key that is no
setting (a misspelling would otherwise leave the default silently in force) is an error with a
did-you-mean, and a TOML file that is not UTF-8 or not TOML is named with its line.
`XCO2_*` variables that are read elsewhere, not settings, are listed in NON_SETTING_VARIABLES.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tempfile
import threading
import tomllib
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# The source of truth for the protocol names (plain Python and numpy: the nightly path may import it).
from models.validation import PROTOCOLS
from tasks.regions.boundary import SHIPPED_BOUNDARIES, BoundaryError, check_boundary, shipped_boundary


class SourceMode(str, Enum):
    demo = "demo"
    local = "local"
    earthdata = "earthdata"


class Region(BaseModel):
    """A named bounding box in degrees (WGS84)."""

    model_config = ConfigDict(extra="forbid")  # `westt = 100` must not leave west at its default

    name: str = "sichuan"
    west: float = 92.35
    south: float = 26.05
    east: float = 108.20
    north: float = 34.32
    # A polygon (GeoJSON or ESRI shapefile path) narrowing the box to the cells whose centre lies in
    # it: only those are mapped and reported. Unset: the boundary shipped for the region's name
    # (tasks/regions/boundaries: sichuan), else none; "none": the whole box.
    boundary: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_boundary(cls, data: Any) -> Any:
        if isinstance(data, dict):
            named = data.get("boundary")
            if isinstance(named, str) and named.startswith(SHIPPED_PREFIX):
                shipped = shipped_boundary(named.removeprefix(SHIPPED_PREFIX))
                if shipped is None:
                    raise ValueError(f"no shipped boundary {named!r}; shipped: "
                                     f"{', '.join(SHIPPED_PREFIX + n for n in SHIPPED_BOUNDARIES)}")
                data = {**data, "boundary": str(shipped)}
            if "boundary" not in data:
                shipped = shipped_boundary(data.get("name", cls.model_fields["name"].default))
                data = {**data, "boundary": str(shipped) if shipped else None}
            elif isinstance(data["boundary"], str) and data["boundary"].strip().lower() == "none":
                data = {**data, "boundary": None}  # TOML has no null; str(None) from a dumped region
        return data

    @field_validator("boundary")
    @classmethod
    def _boundary_not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty (\"none\" for the whole box)")
        return v

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"region name {v!r} must be letters, digits, '-' or '_'")
        return v

    @model_validator(mode="after")
    def _box_is_valid(self) -> "Region":
        if not (-180 <= self.west < self.east <= 180):
            raise ValueError(f"west {self.west} must be < east {self.east}, both in [-180, 180]")
        if not (-90 <= self.south < self.north <= 90):
            raise ValueError(f"south {self.south} must be < north {self.north}, both in [-90, 90]")
        if self.boundary is not None:
            try:
                check_boundary(self.boundary, self.west, self.south, self.east, self.north)
            except BoundaryError as exc:
                raise ValueError(str(exc)) from None
        return self


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


ENV_PREFIX = "XCO2_"
# `XCO2_*` variables that are not settings but are read elsewhere; any other `XCO2_*` variable
# must name a setting. XCO2_CONFIG: the TOML file (below). XCO2_REPO: the checkout a Prefect
# worker runs the deployments from (deployments/prefect.yaml, Dockerfile, docker-compose.yml).
# XCO2_STACK_*: `make up` (deployments/stack.py).
# XCO2_TEST_OUTPUT: where the slow tests save what a person should look at (the browser test's
# screenshots, tests/test_stack_browser.py).
NON_SETTING_VARIABLES = frozenset({"XCO2_CONFIG", "XCO2_REPO", "XCO2_TEST_OUTPUT"})
NON_SETTING_PREFIXES = ("XCO2_STACK_",)

# The data directory's record of what it was made for (`xco2 demo` writes it): settings it holds
# are defaults below the environment and the configuration file, and an explicit region or source
# that disagrees with it is an error naming both (a demo data dir read with the default region
# would otherwise fail on layers made for another box, and quarantine them).
DATA_DIR_RECORD = "data-dir.toml"
# What a data dir is *for*: an explicit value of these must agree with the record. Every other
# recorded setting (the demo's CPU-sized training, say) is only a default.
RECORD_BINDING = ("region", "source")
# The record's boundary when it is a shipped one: installed copies live in different places (a
# venv, the image's /app), so the record names it, not its path.
SHIPPED_PREFIX = "shipped:"

# The most cells a region's grid may have. A day's mapping holds a few dozen float32 layers of the
# whole grid (covariates, features, the map and its uncertainty): at 4 bytes a cell each, this many
# cells is tens of GB. Sichuan at the paper's 0.01 degree is 1.3 million cells, at 0.001 131 million.
MAX_GRID_CELLS = 200_000_000

# The URI schemes MLflow's model registry can use (mlflow.tracking._model_registry.utils
# _get_store_registry; "" is a plain path). Copied, not imported: settings are on the nightly path
# and MLflow takes seconds to import. tests/faults/test_config_fail_fast.py checks they agree.
MLFLOW_DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")
MLFLOW_REGISTRY_SCHEMES = ("", "file", "http", "https", *MLFLOW_DATABASE_SCHEMES, "databricks", "databricks-uc", "uc")
# How long `check_tracking_server` waits for a TCP connection to an http(s) tracking server.
TRACKING_PROBE_TIMEOUT_S = 1.5

# The names of models.baselines.MODELS, copied because that module reaches torch (the ResNet's fit)
# and settings are on the nightly path; tests/test_settings_lists.py checks the two agree.
COMPARISON_MODELS = ("resnet_lstm", "random_forest", "xgboost")


def _toml_path() -> Path | None:
    explicit = os.environ.get("XCO2_CONFIG")
    if explicit:
        path = Path(explicit)
        if path.is_dir():
            raise ConfigError(f"XCO2_CONFIG: {path} is a directory, not a TOML file")
        if not path.exists():
            raise ConfigError(f"XCO2_CONFIG: file {path} does not exist")
        return path
    default = Path("xco2.toml")
    return default if default.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's table; a file that cannot be read, is not UTF-8 or is not TOML raises a
    ConfigError naming the file and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte {raw[exc.start:exc.start + 1]!r} at offset "
                          f"{exc.start}); TOML files must be UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _nested_models() -> dict[str, type[BaseModel]]:
    """Settings whose value is a model of its own (set as XCO2_<NAME>__<FIELD> or a [name] table)."""
    out = {}
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            out[name] = info.annotation
    return out


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_toml_keys(data: Mapping[str, Any], path: Path) -> None:
    nested = _nested_models()
    fields = list(Settings.model_fields)
    problems = []
    for key, value in data.items():
        if key not in Settings.model_fields:
            problems.append(f"{path}: unknown setting {key!r}{_did_you_mean(key, fields)}")
        elif key in nested and isinstance(value, Mapping):
            known = list(nested[key].model_fields)
            for sub in value:
                if sub not in known:
                    problems.append(f"{path}: unknown setting '{key}.{sub}' in [{key}]"
                                    f"{_did_you_mean(sub, known)}")
    if problems:
        raise ConfigError("\n".join(problems))


def setting_variables() -> list[str]:
    """Every `XCO2_*` variable that sets something (nested fields as XCO2_<NAME>__<FIELD>)."""
    names = []
    nested = _nested_models()
    for name in Settings.model_fields:
        names.append(f"{ENV_PREFIX}{name.upper()}")
        for sub in nested[name].model_fields if name in nested else ():
            names.append(f"{ENV_PREFIX}{name.upper()}__{sub.upper()}")
    return names


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise a ConfigError for every `XCO2_*` variable that is neither a setting nor allow-listed."""
    environ = os.environ if environ is None else environ
    known = setting_variables()
    known_set = set(known)
    problems = []
    for name in sorted(environ):
        upper = name.upper()  # settings are read case-insensitively
        if not upper.startswith(ENV_PREFIX):
            continue
        if upper in known_set or upper in NON_SETTING_VARIABLES or upper.startswith(NON_SETTING_PREFIXES):
            continue
        problems.append(f"unknown setting variable {name}{_did_you_mean(upper, known)}: no setting has this "
                        "name; correct or unset it")
    if problems:
        raise ConfigError("\n".join(problems))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="XCO2_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    region: Region = Field(default_factory=Region)
    grid_step: float = Field(0.01, gt=0, le=1, description="grid step in degrees")
    data_dir: Path = Path("xco2-data")
    archive_dir: Path | None = None  # default: <data_dir>/archive
    source: SourceMode = SourceMode.demo
    local_dir: Path | None = None  # source=local: directory of already-downloaded files
    mlflow_tracking_uri: str | None = None  # default: sqlite:///<data_dir>/mlflow.db
    registered_model_name: str = "xco2-resnet-lstm"

    # Product versions (docs/formats.md: newer versions exist, so they are configuration).
    oco2_short_name: str = "OCO2_L2_Lite_FP"
    oco2_version: str = "11.1r"
    oco3_short_name: str = "OCO3_L2_Lite_FP"
    oco3_version: str = "10.4r"
    gosat_algorithm: str = "tanso_fts_ocfp"
    gosat_version: str = "7_3"
    era5_latency_days: int = Field(5, ge=0, description="ERA5 (ERA5T) appears about this many days late")
    era5_final_after_days: int = Field(90, ge=1, description="final ERA5 replaces ERA5T after about this many days")
    era5_final_window_days: int = Field(30, ge=1, description="days past that age checked for final ERA5 each run")
    # Optional Prefect Secret blocks holding credentials (else environment, ~/.netrc, ~/.cdsapirc).
    earthdata_secret_block: str | None = None
    cds_secret_block: str | None = None

    # The real archives' network (tasks.sources.retry): every request is bounded, and a service
    # that does not answer this many times in a row is not asked again for the rest of the run.
    source_connect_timeout_s: float = Field(20.0, gt=0, le=600, description="seconds to connect to an archive")
    source_read_timeout_s: float = Field(120.0, gt=0, le=3600, description="seconds an archive may stay silent")
    source_breaker_failures: int = Field(3, ge=1, description="connection failures before a service is given up for the run")
    cds_client_retries: int = Field(2, ge=1, description="cdsapi's own tries of one HTTP call")
    cds_client_sleep_s: float = Field(10.0, ge=0, description="cdsapi's longest wait between those tries")

    # Training (Table 5); the demo may cap epochs and samples.
    max_epochs: int = Field(200, ge=1)
    batch_size: int = Field(1024, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    early_stopping_patience: int = Field(10, ge=1)
    lr_patience: int = Field(5, ge=1)
    lr_factor: float = Field(0.5, gt=0, lt=1)
    max_training_samples: int | None = Field(None, ge=100)
    max_validation_samples: int | None = Field(None, ge=100)
    validation_fraction: float = Field(0.2, gt=0, lt=0.9)
    seed: int = 42

    # Model comparison in the retrain (issue 4): protocols from models.validation.PROTOCOLS and
    # models from models.baselines; an empty list skips it. Costly on CPU: see docs/validation.md.
    comparison_protocols: list[str] = Field(
        default_factory=lambda: ["random_holdout", "spatial_blocks", "temporal_blocks"])
    comparison_models: list[str] = Field(default_factory=lambda: ["resnet_lstm", "random_forest", "xgboost"])
    comparison_max_train_samples: int = Field(20000, ge=100)
    comparison_max_epochs: int = Field(20, ge=1)
    comparison_folds: int = Field(5, ge=2, description="folds of the block cross-validations")

    # Operation.
    # The demo world ends on a day of 2020: a demo data dir records it here, so that a daily run
    # without dates (the stack's nightly deployment) updates the world's last days, not 2026's.
    today: date | None = Field(None, description="the day a run without an end date takes as today (default: UTC today)")
    unavailable_recheck_days: float = Field(1.0, ge=0, description="wait before asking again for a granule the archive lacked")
    ingest_lookback_days: int = Field(10, ge=1, description="days back the daily run looks for late granules")
    archive_lookback_days: int = Field(3, ge=1, description="days back the nightly run fills")
    inference_batch_size: int = Field(8192, ge=256, description="cells per ONNX Runtime call")
    # Anchoring (tasks/mapping/anchoring.py): each map is offset by the mean residual of the fused
    # observations of the trailing window, so the archive holds its level past the training window.
    anchoring: bool = Field(True, description="offset each map by the recent observations' mean residual")
    anchor_window_days: int = Field(24, ge=1, le=90, description="trailing days of observations")
    anchor_method: Literal["trend", "mean"] = Field(
        "trend", description="line through the daily residuals at the day, or their mean")
    anchor_min_cells_per_day: int = Field(20, ge=1, description="observed cells a day needs to count")
    anchor_max_cells_per_day: int = Field(500, ge=10, description="observed cells per day predicted (seeded subsample)")
    # The daily anomaly (tasks/mapping/daily_anomaly.py) replaces anchoring for champions that carry a
    # residual field (every champion trained with a background).
    daily_anomaly: bool = Field(True, description="add the kriged residuals of the observations around each day")
    daily_anomaly_max_cells_per_day: int = Field(
        400, ge=10, description="observed cells per day whose residual is predicted (seeded subsample)")
    promotion_margin_ppm: float = Field(0.0, ge=0, description="a challenger must beat the champion by this much")
    promotion_block_km: float = Field(50.0, ge=50, description="side of the spatial blocks the promotion holds out")

    # Backfill (flows/backfill.py): how the days are mapped. "process": backfill_workers worker
    # processes (tasks/mapping/backfill_pool.py; default one per core, the cores shared out as ONNX
    # Runtime threads); "thread": a Prefect thread pool of backfill_workers in the flow's process;
    # "dask": a Dask cluster, the scheduler at dask_address when set, else a local cluster of
    # dask_workers single-threaded processes.
    task_runner: Literal["process", "thread", "dask"] = "process"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1, description="workers of the local Dask cluster (no dask_address)")
    backfill_workers: int | None = Field(
        None, ge=1, description="worker processes (or threads) of the backfill; default: one per core")

    @field_validator("data_dir", "archive_dir", "local_dir", mode="before")
    @classmethod
    def _path_not_empty(cls, v: Any) -> Any:
        # Path("") is ".": an empty variable would quietly put the data in the current directory.
        if isinstance(v, str) and not v.strip():
            raise ValueError("must not be empty (unset the variable for the default)")
        return v

    @field_validator("grid_step")
    @classmethod
    def _grid_fits(cls, v: float, info: ValidationInfo) -> float:
        region = info.data.get("region")  # absent when the region itself is invalid (named on its own)
        if isinstance(region, Region):
            nx, ny = grid_size(region, v)
            if nx * ny > MAX_GRID_CELLS:
                raise ValueError(f"{v:g} degrees makes a grid of {nx:,} x {ny:,} = {nx * ny:.3g} cells over region "
                                 f"{region.name!r}, more than the {MAX_GRID_CELLS:,} a day's mapping can hold in "
                                 "memory; choose a larger grid_step or a smaller region")
        return v

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri_form(cls, v: str | None) -> str | None:
        if v:
            problem = tracking_uri_problem(v)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("registered_model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("comparison_protocols")
    @classmethod
    def _known_protocols(cls, v: list[str]) -> list[str]:
        known = PROTOCOLS
        unknown = [p for p in v if p not in known]
        if unknown:
            raise ValueError(f"unknown protocols {unknown}; choose from {list(known)}")
        return v

    @field_validator("comparison_models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        known = COMPARISON_MODELS
        unknown = [m for m in v if m not in known]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {list(known)}")
        return v

    @model_validator(mode="after")
    def _local_needs_dir(self) -> "Settings":
        if self.source == SourceMode.local and self.local_dir is None:
            raise ValueError("source=local needs local_dir (XCO2_LOCAL_DIR)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        check_environment()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path()
        if toml is not None:
            _check_toml_keys(read_toml(toml), toml)
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        sources.append(DataDirRecordSource(settings_cls, init_settings, [
            (f"{ENV_PREFIX}* variables", env_settings),
            *([(str(toml), sources[-1])] if toml is not None else [])]))
        return tuple(sources)

    # Derived locations: one place decides the data layout.
    @property
    def archive_root(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "archive"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.data_dir.resolve() / 'mlflow.db'}"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    def raw(self, product: str) -> Path:
        """Where a product's raw files lie (`era5`, `oco2`, `static`, ...). Satellite granules are
        global files, shared by every region; ERA5 is cut to a region's box, so it is the region's own."""
        if product == "era5":
            return self.raw_dir / product / self.region.name
        return self.raw_dir / product

    @property
    def manifest_path(self) -> Path:
        """The record of every raw file pulled (tasks/sources/manifest.py)."""
        return self.raw_dir / "manifest.parquet"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def region_dir(self) -> Path:
        """Derived per-region products: gridded cells, samples, covariates."""
        return self.data_dir / "regions" / self.region.name


class DataDirRecordSource(PydanticBaseSettingsSource):
    """The settings recorded in `<data_dir>/data-dir.toml`, below every other source.

    The data directory is the one the sources above name (else the default). A region or source
    set explicitly (environment or configuration file) must agree with the record; one passed in
    code (the demo's own overrides, which rewrite the record) wins without a check. A region set
    above, even in part, replaces the recorded one whole: half of each would be neither."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource,
                 explicit: list[tuple[str, PydanticBaseSettingsSource]]) -> None:
        super().__init__(settings_cls)
        self.init = init
        self.explicit = explicit

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the whole record at once

    def __call__(self) -> dict[str, Any]:
        code = self.init()
        given = [(name, source()) for name, source in self.explicit]
        data_dir = next((values["data_dir"] for values in (code, *(v for _, v in given)) if values.get("data_dir")),
                        Settings.model_fields["data_dir"].default)
        path = Path(data_dir) / DATA_DIR_RECORD
        record = read_data_dir_record(Path(data_dir))
        for key in RECORD_BINDING:
            if key not in record:
                continue
            for origin, values in given:
                if key not in values:
                    continue
                # A region given in part (its name, say) agrees when the fields it gives agree.
                merged = ({**record[key], **values[key]} if key == "region" and isinstance(values[key], Mapping)
                          and isinstance(record[key], Mapping) else values[key])
                if _canonical(key, merged) != _canonical(key, record[key]):
                    raise ConfigError(
                        f"{key}: {_describe(key, values[key])} from {origin} conflicts with "
                        f"{_describe(key, record[key])} recorded in {path} for this data directory; "
                        f"unset the {key} setting to use the recorded one, or choose another data directory "
                        f"(XCO2_DATA_DIR)")
        # Values passed in code replace recorded ones whole (a recorded region must not lend its
        # box to a region the demo passes); explicit ones above agree with the record or stopped here.
        return {k: v for k, v in record.items() if k not in code}


def _canonical(key: str, value: Any) -> Any:
    try:
        if key == "region":
            return Region(**value).model_dump() if isinstance(value, Mapping) else value
        return SourceMode(value).value if isinstance(value, (str, SourceMode)) else value
    except (ValidationError, ValueError):
        return value  # invalid: the setting's own validation names it


def _describe(key: str, value: Any) -> str:
    if key == "region" and isinstance(value, Mapping):
        return "region " + ", ".join(f"{k}={v}" for k, v in value.items())
    return f"{key} {str(getattr(value, 'value', value))!r}"


def read_data_dir_record(data_dir: Path) -> dict[str, Any]:
    """The settings `<data_dir>/data-dir.toml` records ({} when there is none); a record that is
    not TOML, or names a setting that does not exist, is a ConfigError naming the file."""
    path = Path(data_dir) / DATA_DIR_RECORD
    if not path.is_file():
        return {}
    record = read_toml(path)
    if "data_dir" in record:
        raise ConfigError(f"{path}: a data directory's record cannot name another data_dir")
    _check_toml_keys(record, path)
    return record


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()  # a TOML local date
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(getattr(value, "value", value))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_data_dir_record(data_dir: Path, values: Mapping[str, Any], made_by: str) -> Path:
    """Record in `<data_dir>/data-dir.toml` the settings the data directory was made with (region,
    source, ...; None values left out), written to a sibling temp file, read back and renamed.
    A shipped boundary is recorded by name (SHIPPED_PREFIX)."""
    path = Path(data_dir) / DATA_DIR_RECORD
    flat = {k: v for k, v in values.items() if v is not None and not isinstance(v, Mapping) and k != "data_dir"}
    tables = {k: v for k, v in values.items() if isinstance(v, Mapping)}
    lines = [f"# What this data directory was made for, written by {made_by}. xco2 reads these settings",
             "# below the environment and xco2.toml; an explicit region or source that disagrees is an error.",
             "# Edit or remove this file to use the directory for something else (docs/configuration.md)."]
    lines += [f"{k} = {_toml_value(v)}" for k, v in flat.items()]
    shipped = {str(p): name for name, p in SHIPPED_BOUNDARIES.items()}
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        for k, v in table.items():
            if k == "boundary" and str(v) in shipped:
                v = SHIPPED_PREFIX + shipped[str(v)]
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if read_toml(tmp) != tomllib.loads(text):
            raise ConfigError(f"{tmp}: the record did not read back as written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning a validation error into one naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = "XCO2_" + "__".join(str(p) for p in err["loc"]).upper()
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown setting '{name}'{_did_you_mean(env, setting_variables())}")
                continue
            shown = redact_userinfo(err.get("input")) if name == "mlflow_tracking_uri" else err.get("input")
            problems.append(f"setting '{name}' ({env}): {err['msg']} (got {shown!r})")
        if len(problems) == 1:  # one line: the last line of the command's output names the setting
            raise ConfigError(f"invalid configuration: {problems[0]}") from None
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def check_writable_dir(path: Path, what: str) -> None:
    """Create `path` if missing and prove it writable with a probe file; a ConfigError names the
    directory and the reason. (Permission bits are not enough: a read-only filesystem or a
    full quota shows only when writing.)"""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".xco2-write-check-", suffix=".tmp", dir=path)
    except OSError as exc:
        raise ConfigError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_data_dir(settings: Settings) -> Settings:
    """Before a run starts: the data directory (and a separate archive directory) exist or can be
    created, and can be written. Returns `settings`."""
    check_writable_dir(settings.data_dir, "data directory (XCO2_DATA_DIR)")
    if settings.archive_dir is not None:
        check_writable_dir(settings.archive_dir, "archive directory (XCO2_ARCHIVE_DIR)")
    return settings


def grid_size(region: Region, step: float) -> tuple[int, int]:
    """(nx, ny) of the region's grid at `step`, its edges snapped outwards to multiples of the
    step as tasks.gridding.geometry.Grid does (which imports this module)."""
    def cells(low: float, high: float) -> int:
        return math.ceil(round(high / step, 6)) - math.floor(round(low / step, 6))
    return cells(region.west, region.east), cells(region.south, region.north)


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@")


def redact_userinfo(value: Any) -> Any:
    """'postgresql://u:pw@h/db' -> 'postgresql://u:***@h/db' (a password never reaches a message);
    anything but a string unchanged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", value) if isinstance(value, str) else value


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow's model registry could not use `uri`, from its form alone; None when it can."""
    if uri != uri.strip() or any(c.isspace() for c in uri):
        return "must not contain spaces"
    try:
        parts = urlsplit(uri)
        port = parts.port if parts.scheme.lower() in ("http", "https") else None
    except ValueError as exc:
        return f"not a URI ({exc})"
    scheme = parts.scheme.lower()
    if len(scheme) == 1:
        scheme = ""  # a Windows drive letter: a path
    engine = scheme.split("+", 1)[0]
    if scheme not in MLFLOW_REGISTRY_SCHEMES and not ("+" in scheme and engine in MLFLOW_DATABASE_SCHEMES):
        return (f"scheme '{scheme}' is not one MLflow's model registry can use: use sqlite:///<path>, "
                "http(s)://<host>:<port> of a tracking server, or a database URI (postgresql://, mysql://, mssql://)")
    if scheme in ("http", "https") and not parts.hostname:
        return f"{scheme}:// needs a host (http://<host>:<port>)"
    if scheme in ("http", "https") and port == 0:
        return "port 0 is no server's port"
    if engine == "sqlite" and not uri.startswith(f"{parts.scheme}:///"):
        return "a SQLite URI is sqlite:///<path of the .db file> (three slashes, then the path)"
    return None


def check_local_source(settings: Settings) -> None:
    """source=local: `local_dir` is an existing directory. Checked at a command's start: the pull
    would otherwise list nothing and the run end on a later symptom."""
    if settings.source != SourceMode.local or settings.local_dir is None:
        return
    path = settings.local_dir
    if not path.is_dir():
        why = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError(f"local_dir (XCO2_LOCAL_DIR): {path} {why}; source=local reads the granules from it")


def _health_problem(health_url: str, timeout_s: float) -> str | None:
    """Why `health_url` did not answer as an MLflow server does (HTTP 200) within `timeout_s`, or
    None. A TCP connection alone proves nothing: a proxy, a firewall or another service may take
    it and then say nothing useful. The request (name lookup included) runs in a thread so that
    the whole probe is bounded."""
    import requests

    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            response = requests.get(health_url, timeout=(timeout_s, timeout_s), allow_redirects=False)
        except requests.ConnectionError as exc:
            refused = isinstance(getattr(exc, "__context__", None), ConnectionRefusedError) or "refused" in str(exc)
            outcome.append("connection refused" if refused else "no connection")
        except requests.Timeout:
            outcome.append("no answer")
        except requests.RequestException as exc:
            outcome.append(type(exc).__name__)
        else:
            outcome.append(None if response.status_code == 200 else
                           f"HTTP {response.status_code} from its /health: not an MLflow tracking server")

    thread = threading.Thread(target=attempt, name="xco2-tracking-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.25)
    return outcome[0] if outcome else "no answer"


def check_tracking_server(settings: Settings, timeout_s: float = TRACKING_PROBE_TIMEOUT_S) -> None:
    """An http(s) tracking URI: its server answers MLflow's health check (`<uri>/health`, HTTP 200,
    through the proxy the environment names, as MLflow's own requests go) within `timeout_s`, else
    a ConfigError naming the setting and the server, at once instead of after MLflow's retries.
    Other URIs are local stores: nothing to probe. Called where a command that uses the registry
    starts, not in `load_settings`."""
    uri = settings.tracking_uri
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return
    # MLflow's server answers /health (under its static prefix, if any) without credentials.
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    health_url = urlunsplit((scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    problem = _health_problem(health_url, timeout_s)
    if problem is not None:
        raise ConfigError(
            f"mlflow_tracking_uri (XCO2_MLFLOW_TRACKING_URI): the MLflow tracking server {redact_userinfo(uri)} "
            f"does not answer as MLflow does ({problem}; {health_url} probed for {timeout_s:g} s): start it (`make up` starts "
            "the stack) or point XCO2_MLFLOW_TRACKING_URI at a running one")
