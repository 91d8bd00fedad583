"""One typed settings object for the whole system.

Values come from `XCO2_*` environment variables, then an optional TOML file (`XCO2_CONFIG` or
`./xco2.toml`), then the defaults below. An invalid value stops the command with a message
that names the setting.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class SourceMode(str, Enum):
    demo = "demo"
    local = "local"
    earthdata = "earthdata"


class Region(BaseModel):
    """A named bounding box in degrees (WGS84)."""

    name: str = "sichuan"
    west: float = 92.35
    south: float = 26.05
    east: float = 108.20
    north: float = 34.32

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
        return self


class ConfigError(ValueError):
    """A setting is invalid; the message names it."""


def _toml_path() -> Path | None:
    explicit = os.environ.get("XCO2_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"XCO2_CONFIG: file {path} does not exist")
        return path
    default = Path("xco2.toml")
    return default if default.is_file() else None


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

    # Product versions (formats.md: newer versions exist, so they are configuration).
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
    # models from models.baselines; an empty list skips it. Costly on CPU: see the README.
    comparison_protocols: list[str] = Field(
        default_factory=lambda: ["random_holdout", "spatial_blocks", "temporal_blocks"])
    comparison_models: list[str] = Field(default_factory=lambda: ["resnet_lstm", "random_forest", "xgboost"])
    comparison_max_train_samples: int = Field(20000, ge=100)
    comparison_max_epochs: int = Field(20, ge=1)
    comparison_folds: int = Field(5, ge=2, description="folds of the block cross-validations")

    # Operation.
    unavailable_recheck_days: float = Field(1.0, ge=0, description="wait before asking again for a granule the archive lacked")
    ingest_lookback_days: int = Field(10, ge=1, description="days back the daily run looks for late granules")
    archive_lookback_days: int = Field(3, ge=1, description="days back the nightly run fills")
    inference_batch_size: int = Field(8192, ge=256, description="cells per ONNX Runtime call")
    # Anchoring (tasks/anchoring.py): each map is offset by the mean residual of the fused
    # observations of the trailing window, so the archive holds its level past the training window.
    anchoring: bool = Field(True, description="offset each map by the recent observations' mean residual")
    anchor_window_days: int = Field(24, ge=1, le=90, description="trailing days of observations")
    anchor_method: Literal["trend", "mean"] = Field("trend", description="line through the daily residuals at the day, or their mean")
    anchor_min_cells_per_day: int = Field(20, ge=1, description="observed cells a day needs to count")
    anchor_max_cells_per_day: int = Field(500, ge=10, description="observed cells per day predicted (seeded subsample)")
    promotion_margin_ppm: float = Field(0.0, ge=0, description="a challenger must beat the champion by this much")
    promotion_block_km: float = Field(50.0, ge=50, description="side of the spatial blocks the promotion holds out")

    # Backfill (flows/backfill.py): how the per-day tasks run. "thread": a thread pool of
    # backfill_workers in the flow's process; "dask": a Dask cluster, the scheduler at
    # dask_address when set, else a local cluster of dask_workers single-threaded processes.
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1, description="workers of the local Dask cluster (no dask_address)")
    backfill_workers: int = Field(2, ge=1, description="threads of the thread task runner")

    @field_validator("registered_model_name")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("comparison_protocols")
    @classmethod
    def _known_protocols(cls, v: list[str]) -> list[str]:
        known = ("random_holdout", "random_kfold", "spatial_blocks", "temporal_blocks")
        unknown = [p for p in v if p not in known]
        if unknown:
            raise ValueError(f"unknown protocols {unknown}; choose from {list(known)}")
        return v

    @field_validator("comparison_models")
    @classmethod
    def _known_models(cls, v: list[str]) -> list[str]:
        known = ("resnet_lstm", "random_forest", "xgboost")
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = _toml_path()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
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

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def region_dir(self) -> Path:
        """Derived per-region products: gridded cells, samples, covariates."""
        return self.data_dir / "regions" / self.region.name


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning a validation error into one naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            env = "XCO2_" + "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"setting '{name}' ({env}): {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
