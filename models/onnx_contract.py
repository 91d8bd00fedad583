"""What an exported XCO2 ONNX file promises its readers: tensor names and metadata keys.

Shared by the exporter (torch side) and the runtime (onnxruntime side, which must not import
torch), so the two cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

INPUT_NAME = "features"  # float32 [batch, n_features], raw covariates in feature_names order
OUTPUT_NAME = "xco2"  # float32 [batch], ppm
# float32 [batch], ppm: half-width of the calibrated 68% interval; absent from older exports.
UNCERTAINTY_OUTPUT_NAME = "xco2_uncertainty"
OPSET = 17

# metadata_props values are strings; lists and dicts are JSON.
KEY_FEATURE_NAMES = "xco2.feature_names"
KEY_FEATURE_SET_VERSION = "xco2.feature_set_version"
KEY_SCALERS = "xco2.scalers"
KEY_OUTPUT_UNITS = "xco2.output_units"
KEY_MODEL = "xco2.model"
KEY_UNCERTAINTY = "xco2.uncertainty"
# How maps are made from the graph's output: the background it contains, the network anomaly's
# scale and the daily-anomaly field (models/residual_field.py) that the mapping path adds.
KEY_MAPPING = "xco2.mapping"


def encode_metadata(
    feature_names: list[str], feature_set_version: str, scalers: dict[str, Any],
    uncertainty: dict[str, Any] | None = None, mapping: dict[str, Any] | None = None,
) -> dict[str, str]:
    extra = {KEY_UNCERTAINTY: json.dumps(uncertainty)} if uncertainty else {}
    if mapping:
        extra[KEY_MAPPING] = json.dumps(mapping, sort_keys=True)
    return {
        **extra,
        KEY_FEATURE_NAMES: json.dumps(list(feature_names)),
        KEY_FEATURE_SET_VERSION: str(feature_set_version),
        KEY_SCALERS: json.dumps(scalers),
        KEY_OUTPUT_UNITS: "ppm",
        KEY_MODEL: "ResNet-LSTM (Table 4), standardisation baked in",
    }


def decode_metadata(props: dict[str, str], source: str) -> dict[str, Any]:
    """metadata_props -> {feature_names, feature_set_version, scalers, output_units, n_features}."""
    missing = [k for k in (KEY_FEATURE_NAMES, KEY_FEATURE_SET_VERSION, KEY_SCALERS)
               if k not in props]
    if missing:
        raise ValueError(
            f"{source} is not an XCO2 model export: metadata lacks {', '.join(missing)}"
        )
    names = json.loads(props[KEY_FEATURE_NAMES])
    return {
        "feature_names": names,
        "feature_set_version": props[KEY_FEATURE_SET_VERSION],
        "scalers": json.loads(props[KEY_SCALERS]),
        "output_units": props.get(KEY_OUTPUT_UNITS, "ppm"),
        "n_features": len(names),
        "uncertainty": json.loads(props[KEY_UNCERTAINTY]) if KEY_UNCERTAINTY in props else None,
        "mapping": json.loads(props[KEY_MAPPING]) if KEY_MAPPING in props else None,
    }
