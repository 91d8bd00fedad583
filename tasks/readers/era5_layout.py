"""Names and metadata of the ERA5 single-level variables the system uses (docs/formats.md)."""

from __future__ import annotations

# Canonical short names, in the order the paper's Table 2 lists the meteorology.
ERA5_VARIABLES = ("e", "tp", "sp", "t2m", "d2m", "u10", "v10", "sund")
ACCUMULATED = ("e", "tp", "sund")  # the hour ending at the validity time
INSTANTANEOUS = ("sp", "t2m", "d2m", "u10", "v10")

# ECMWF's converters have changed names before ("not a long-term stable format"): accept the
# GRIB short names and the CDS request names as well.
ERA5_ALIASES = {
    **{v: v for v in ERA5_VARIABLES},
    "evaporation": "e", "total_precipitation": "tp", "surface_pressure": "sp",
    "2t": "t2m", "2m_temperature": "t2m", "2d": "d2m", "2m_dewpoint_temperature": "d2m",
    "10u": "u10", "10m_u_component_of_wind": "u10", "10v": "v10",
    "10m_v_component_of_wind": "v10", "sunshine_duration": "sund",
}
TIME_NAMES = ("valid_time", "time")
LATITUDE_NAMES = ("latitude", "lat")
LONGITUDE_NAMES = ("longitude", "lon")

# What the CDS writes alongside each variable (GRIB paramId, units, long name, CF name).
GRIB_PARAMETERS = {
    "e": (182, "m of water equivalent", "Evaporation", "lwe_thickness_of_water_evaporation_amount"),
    "tp": (228, "m", "Total precipitation", "unknown"),
    "sp": (134, "Pa", "Surface pressure", "surface_air_pressure"),
    "t2m": (167, "K", "2 metre temperature", "unknown"),
    "d2m": (168, "K", "2 metre dewpoint temperature", "unknown"),
    "u10": (165, "m s**-1", "10 metre U wind component", "unknown"),
    "v10": (166, "m s**-1", "10 metre V wind component", "unknown"),
    "sund": (189, "s", "Sunshine duration", "unknown"),
}
GRIB_SHORT_NAMES = {"e": "e", "tp": "tp", "sp": "sp", "t2m": "2t", "d2m": "2d", "u10": "10u",
                    "v10": "10v", "sund": "sund"}

# expver values: "0001" final ERA5, "0005" preliminary ERA5T.
EXPVER_FINAL = "0001"
EXPVER_PRELIMINARY = "0005"
