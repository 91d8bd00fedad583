"""`xco2 covariates build`: every static layer from its real archive, each independent of the others."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import date
from typing import Any

from tasks.settings import Settings
from tasks.sources.credentials import MissingCredentials, redact
from tasks.sources.retry import PermanentSourceError
from tasks.sources.static_layers.clients import Archives
from tasks.sources.static_layers.common import LAYERS, StaticLayerError, check_layer
from tasks.sources.static_layers.elevation import build_elevation
from tasks.sources.static_layers.landcover import build_landcover
from tasks.sources.static_layers.ndvi import build_ndvi
from tasks.sources.static_layers.population import GPW_SHORT_NAME, GPW_VERSION, build_population

log = logging.getLogger(__name__)

# Errors whose text is already a complete, secret-free sentence for the user.
_SELF_EXPLAINING = (StaticLayerError, MissingCredentials, PermanentSourceError)


def build_static_layers(settings: Settings, year: int, ndvi_start: date, ndvi_end: date,
                        clients: Any = None, *, force: bool = False, layers: Collection[str] = LAYERS,
                        gpw_short_name: str = GPW_SHORT_NAME, gpw_version: str = GPW_VERSION) -> dict:
    """Build the static layers under `<raw>/static/`; returns {layer: status}.

    Each status is `{"status": "built" | "skipped" | "failed", "files": [names], "message": str}`.
    A failing layer is reported and the others go on; layers already present are skipped unless
    `force`. `year` picks the population (nearest GPW year) and land cover maps; NDVI composites
    overlapping [ndvi_start, ndvi_end] are built. `clients` (a `Clients` or a dict with keys
    'earthaccess' and 'cdsapi') replaces the real modules, for tests.
    """
    if ndvi_start > ndvi_end:
        raise ValueError(f"ndvi_start {ndvi_start} is after ndvi_end {ndvi_end}")
    for layer in layers:
        check_layer(layer)
    archives = Archives(settings, clients)
    steps = {
        "elevation": lambda: build_elevation(archives, force=force),
        "population": lambda: build_population(archives, year, force=force,
                                               short_name=gpw_short_name, version=gpw_version),
        "landcover": lambda: build_landcover(archives, year, force=force),
        "ndvi": lambda: build_ndvi(archives, ndvi_start, ndvi_end, force=force),
    }
    report: dict[str, dict] = {}
    for layer in layers:
        try:
            report[layer] = steps[layer]()
        except Exception as exc:  # noqa: BLE001 - one layer's failure must not stop the others
            text = str(exc) if isinstance(exc, _SELF_EXPLAINING) else f"{type(exc).__name__}: {exc}"
            report[layer] = {"status": "failed", "files": [], "message": redact(text)}
            log.error("static layer %s failed: %s", layer, report[layer]["message"])
        else:
            log.info("static layer %s: %s (%s)", layer, report[layer]["status"], report[layer]["message"])
    return report
