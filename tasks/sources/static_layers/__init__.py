"""Static covariate layers (paper Table 2) as the covariate builder reads them, under `<raw>/static/`.

- `import_layer(settings, layer, file, composite_start=None)`: a user's raster in any CRS and
  resolution (`xco2 covariates import LAYER FILE [--start YYYY-MM-DD]`).
- `build_static_layers(settings, year, ndvi_start, ndvi_end, clients=None, force=False)`: from
  the archives (`xco2 covariates build`): NASADEM_HGT (elevation), GPW v4.11 (population),
  ESA CCI land cover via the CDS (landcover), MOD13Q1/MYD13Q1 (NDVI; HDF4 read with pyhdf).

Outputs and their formats are described in `common`; every written layer is recorded in
`<raw>/static/layers.json` (source, file, sha256, when).
"""

from tasks.sources.static_layers.build import build_static_layers
from tasks.sources.static_layers.clients import Clients
from tasks.sources.static_layers.common import LAYERS, SPECS, StaticLayerError, read_layers_json, static_dir
from tasks.sources.static_layers.importer import import_layer
from tasks.sources.static_layers.landcover_codes import LCCS_LEGEND, LCCS_TO_CLASS
from tasks.sources.static_layers.ndvi import Hdf4Unavailable, has_hdf4, hdf4_missing_help

__all__ = [
    "Clients", "Hdf4Unavailable", "LAYERS", "LCCS_LEGEND", "LCCS_TO_CLASS", "SPECS", "StaticLayerError",
    "build_static_layers", "has_hdf4", "hdf4_missing_help", "import_layer", "read_layers_json", "static_dir",
]
