"""Gridding hand-built soundings onto a small 0.01 degree grid whose cells we can name."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from tasks.gridding.geometry import Grid
from tasks.gridding.cells import CELL_COLUMNS, grid_soundings, km_per_degree, sounding_footprints
from tasks.gridding.soundings import VERTEX_LAT, VERTEX_LON

GRID = Grid(west=104.0, south=30.0, east=104.5, north=30.5, step=0.01)  # 50 x 50 cells


def centre(row: int, col: int) -> tuple[float, float]:
    lat, lon = GRID.centre(row, col)
    return float(lat), float(lon)


def oco(vertices, xco2=410.0, sigma=0.5, lat=None, lon=None, source="oco2") -> dict:
    """One OCO sounding from its 4 (lat, lon) vertices; the centre defaults to their mean."""
    vertices = np.asarray(vertices, dtype=float)
    record = {
        "latitude": vertices[:, 0].mean() if lat is None else lat,
        "longitude": vertices[:, 1].mean() if lon is None else lon,
        "xco2": xco2,
        "xco2_uncertainty": sigma,
        "source": source,
        "footprint_diameter_km": np.nan,
    }
    for i in range(4):
        record[VERTEX_LAT[i]] = vertices[i, 0]
        record[VERTEX_LON[i]] = vertices[i, 1]
    return record


def gosat(lat, lon, xco2=412.0, sigma=1.5, diameter_km=10.5) -> dict:
    record = {"latitude": lat, "longitude": lon, "xco2": xco2, "xco2_uncertainty": sigma,
              "source": "gosat", "footprint_diameter_km": diameter_km}
    record.update({c: np.nan for c in VERTEX_LAT + VERTEX_LON})
    return record


def box(south, north, west, east):
    return [(south, west), (south, east), (north, east), (north, west)]


def cells_of(*rowcols) -> list[int]:
    return sorted(int(GRID.cell_id(r, c)) for r, c in rowcols)


def test_rectangle_footprint_covers_the_cells_whose_centres_it_holds():
    # Spans the centres of rows 10-11 in column 20 (a 2-cell OCO footprint), no other centre.
    top, left = centre(10, 20)
    bottom, _ = centre(11, 20)
    vertices = box(bottom - 0.003, top + 0.003, left - 0.004, left + 0.004)
    out = grid_soundings(pd.DataFrame([oco(vertices)]), GRID)
    assert out["cell"].tolist() == cells_of((10, 20), (11, 20))
    assert (out["n_soundings"] == 1).all()
    assert np.allclose(out["xco2"], 410.0) and np.allclose(out["xco2_uncertainty"], 0.5)


def test_rotated_footprint_uses_the_polygon_not_its_bounding_box():
    # A diamond of half-diagonal 0.012 deg holds its centre cell and the 4 edge neighbours
    # (0.01 away) but not the diagonal ones (0.02 away in L1), which its bounding box holds.
    lat, lon = centre(25, 25)
    d = 0.012
    diamond = [(lat - d, lon), (lat, lon + d), (lat + d, lon), (lat, lon - d)]
    out = grid_soundings(pd.DataFrame([oco(diamond)]), GRID)
    assert out["cell"].tolist() == cells_of((25, 25), (24, 25), (26, 25), (25, 24), (25, 26))


def test_vertex_order_direction_does_not_matter():
    lat, lon = centre(5, 5)
    vertices = box(lat - 0.006, lat + 0.006, lon - 0.004, lon + 0.014)
    forward = grid_soundings(pd.DataFrame([oco(vertices)]), GRID)
    backward = grid_soundings(pd.DataFrame([oco(vertices[::-1])]), GRID)
    assert forward["cell"].tolist() == backward["cell"].tolist() == cells_of((5, 5), (5, 6))


def test_tiny_footprint_falls_back_to_its_centre_cell():
    lat, lon = centre(30, 12)
    # Sits between cell centres, so no centre lies inside it.
    lat, lon = lat + 0.003, lon - 0.004
    vertices = box(lat - 0.001, lat + 0.001, lon - 0.0005, lon + 0.0005)
    out = grid_soundings(pd.DataFrame([oco(vertices)]), GRID)
    assert out["cell"].tolist() == cells_of((30, 12))


def test_missing_or_corrupt_vertices_fall_back_to_the_centre_cell():
    lat, lon = centre(7, 40)
    missing = oco(box(lat - 0.01, lat + 0.01, lon - 0.01, lon + 0.01))
    missing[VERTEX_LAT[2]] = np.nan
    # A vertex 5 degrees away cannot belong to a 2 km footprint.
    corrupt = oco(box(lat - 0.01, lat + 0.01, lon - 0.01, lon + 0.01))
    corrupt[VERTEX_LON[1]] = lon + 5.0
    for record in (missing, corrupt):
        out = grid_soundings(pd.DataFrame([record]), GRID)
        assert out["cell"].tolist() == cells_of((7, 40))


def test_gosat_circle_covers_the_cells_within_its_radius():
    lat, lon = centre(25, 25)
    lat, lon = lat + 0.0013, lon - 0.0021  # off-centre, so the set is not trivially symmetric
    out = grid_soundings(pd.DataFrame([gosat(lat, lon)]), GRID)

    km_lat, km_lon = km_per_degree(lat)
    expected_count = math.pi * 5.25**2 / ((GRID.step * km_lat) * (GRID.step * km_lon))
    assert abs(len(out) - expected_count) <= 4, (len(out), expected_count)

    # Brute force over every cell of the grid: the covered cells are exactly those whose centre
    # lies within 5.25 km (local ellipsoidal km per degree at the sounding's latitude).
    all_cells = np.arange(GRID.n_cells)
    clat, clon = GRID.centre(*GRID.cell_rowcol(all_cells))
    distance = np.hypot((clat - lat) * km_lat, (clon - lon) * km_lon)
    assert out["cell"].tolist() == all_cells[distance <= 5.25].tolist()

    # And a spherical great-circle distance agrees except within 50 m of the rim.
    phi1, phi2 = np.radians(lat), np.radians(clat)
    a = (np.sin((phi2 - phi1) / 2) ** 2
         + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(clon - lon) / 2) ** 2)
    great_circle = 2 * 6371.0 * np.arcsin(np.sqrt(a))
    clear = np.abs(great_circle - 5.25) > 0.05
    within = set(all_cells[clear & (great_circle <= 5.25)])
    assert set(out["cell"]) & set(all_cells[clear]) == within


def test_km_per_degree_at_30n():
    km_lat, km_lon = km_per_degree(30.0)
    assert km_lat == pytest.approx(110.85, abs=0.01)
    assert km_lon == pytest.approx(96.49, abs=0.01)


def test_inverse_variance_weighting_matches_hand_computation():
    lat, lon = centre(20, 20)
    tiny = box(lat + 0.002, lat + 0.003, lon + 0.002, lon + 0.003)  # falls back to (20, 20)
    soundings = pd.DataFrame([
        oco(tiny, xco2=400.0, sigma=1.0),
        oco(tiny, xco2=404.0, sigma=2.0),
        oco(tiny, xco2=409.0, sigma=0.5),
    ])
    out = grid_soundings(soundings, GRID)
    w = np.array([1.0, 0.25, 4.0])
    x = np.array([400.0, 404.0, 409.0])
    assert out["cell"].tolist() == cells_of((20, 20))
    assert out["xco2"].iloc[0] == pytest.approx((w * x).sum() / w.sum(), abs=1e-9)
    assert out["xco2_uncertainty"].iloc[0] == pytest.approx(math.sqrt(1 / w.sum()), abs=1e-12)
    assert out["n_soundings"].iloc[0] == 3


def test_overlapping_footprints_share_only_their_common_cells():
    top, left = centre(10, 10)
    both = box(top - 0.005, top + 0.005, left - 0.004, left + 0.014)  # (10,10) and (10,11)
    single = box(top - 0.005, top + 0.005, left + 0.006, left + 0.014)  # (10,11) only
    out = grid_soundings(
        pd.DataFrame([oco(both, xco2=400.0, sigma=1.0), oco(single, xco2=410.0, sigma=1.0)]),
        GRID,
    ).set_index("cell")
    first, second = cells_of((10, 10), (10, 11))
    assert out.loc[first, "xco2"] == pytest.approx(400.0)
    assert out.loc[first, "n_soundings"] == 1
    assert out.loc[second, "xco2"] == pytest.approx(405.0)
    assert out.loc[second, "xco2_uncertainty"] == pytest.approx(math.sqrt(0.5))
    assert out.loc[second, "n_soundings"] == 2


def test_footprints_partly_outside_the_grid_are_clipped():
    # OCO: centre inside the western edge column, one covered centre beyond the edge.
    lat, lon = centre(10, 0)
    vertices = box(lat - 0.004, lat + 0.004, lon - 0.014, lon + 0.004)
    out = grid_soundings(pd.DataFrame([oco(vertices, lat=lat, lon=lon + 0.002)]), GRID)
    assert out["cell"].tolist() == cells_of((10, 0))

    # GOSAT near the north-west corner: only the in-grid part of the circle survives.
    lat, lon = 30.49, 104.01
    out = grid_soundings(pd.DataFrame([gosat(lat, lon)]), GRID)
    km_lat, km_lon = km_per_degree(lat)
    all_cells = np.arange(GRID.n_cells)
    clat, clon = GRID.centre(*GRID.cell_rowcol(all_cells))
    inside = np.hypot((clat - lat) * km_lat, (clon - lon) * km_lon) <= 5.25
    assert out["cell"].tolist() == all_cells[inside].tolist()
    assert 15 < len(out) < 40  # roughly a quarter of the ~81-cell disc
    assert out["cell"].between(0, GRID.n_cells - 1).all()


def test_empty_input_gives_an_empty_frame_with_the_right_dtypes():
    out = grid_soundings(pd.DataFrame([gosat(*centre(3, 3))]).iloc[:0], GRID)
    assert list(out.columns) == CELL_COLUMNS
    assert len(out) == 0
    assert out.dtypes.astype(str).tolist() == ["int64", "float64", "float64", "int32", "float64"]


def test_output_dtypes_and_order():
    lat, lon = centre(40, 40)
    soundings = pd.DataFrame([
        gosat(lat, lon),
        gosat(*centre(3, 3), xco2=415.0),
    ])
    out = grid_soundings(soundings, GRID)
    assert list(out.columns) == CELL_COLUMNS
    assert out.dtypes.astype(str).tolist() == ["int64", "float64", "float64", "int32", "float64"]
    assert out["cell"].is_monotonic_increasing and out["cell"].is_unique


def test_bad_input_is_refused_with_a_clear_error():
    lat, lon = centre(1, 1)
    record = oco(box(lat - 0.004, lat + 0.004, lon - 0.004, lon + 0.004))
    with pytest.raises(ValueError, match="one source"):
        grid_soundings(pd.DataFrame([record, {**record, "source": "oco3"}]), GRID)
    with pytest.raises(ValueError, match="xco2_uncertainty"):
        grid_soundings(pd.DataFrame([{**record, "xco2_uncertainty": 0.0}]), GRID)
    with pytest.raises(ValueError, match="lack"):
        grid_soundings(pd.DataFrame([record]).drop(columns="xco2"), GRID)


def random_oco_day(grid: Grid, n: int, seed: int = 0) -> pd.DataFrame:
    """n OCO-like soundings: 1.29 x 2.25 km footprints at random positions and headings."""
    rng = np.random.default_rng(seed)
    lat = rng.uniform(grid.south + 0.05, grid.north - 0.05, n)
    lon = rng.uniform(grid.west + 0.05, grid.east - 0.05, n)
    km_lat, km_lon = km_per_degree(lat)
    heading = rng.uniform(0, np.pi, n)
    half_across, half_along = 1.29 / 2, 2.25 / 2
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    data = {
        "latitude": lat, "longitude": lon,
        "xco2": rng.normal(415, 2, n), "xco2_uncertainty": rng.uniform(0.3, 1.0, n),
        "source": "oco2", "footprint_diameter_km": np.nan,
    }
    for i, (a, b) in enumerate(corners):
        x = a * half_across * np.cos(heading) - b * half_along * np.sin(heading)
        y = a * half_across * np.sin(heading) + b * half_along * np.cos(heading)
        data[VERTEX_LAT[i]] = lat + y / km_lat
        data[VERTEX_LON[i]] = lon + x / km_lon
    return pd.DataFrame(data)


def test_realistic_oco_footprints_cover_one_to_four_cells_and_time():
    sichuan = Grid(west=92.35, south=26.05, east=108.20, north=34.32, step=0.01)
    soundings = random_oco_day(sichuan, 20_000)
    gosat_day = pd.DataFrame([gosat(la, lo) for la, lo in zip(
        np.linspace(27, 33, 100), np.linspace(95, 106, 100))])

    start = time.perf_counter()
    out = grid_soundings(soundings, sichuan)
    oco_seconds = time.perf_counter() - start
    start = time.perf_counter()
    gosat_out = grid_soundings(gosat_day, sichuan)
    gosat_seconds = time.perf_counter() - start
    print(f"\ngrid_soundings: 20k OCO soundings -> {len(out)} cells in {oco_seconds * 1e3:.0f} ms;"
          f" 100 GOSAT soundings -> {len(gosat_out)} cells in {gosat_seconds * 1e3:.0f} ms")

    # 1.29 x 2.25 km = 2.9 km^2 over ~1.07 km^2 cells: ~2.7 cells per sounding on average.
    cells_per_sounding = out["n_soundings"].sum() / len(soundings)
    assert 2.0 < cells_per_sounding < 3.5


def test_weights_sum_to_the_number_of_soundings_for_circles_and_polygons():
    """Each sounding counts once however many cells it fills: ~1/80 per GOSAT cell, ~1/3 per OCO one."""
    oco_day = random_oco_day(GRID, 300, seed=4)
    out = grid_soundings(oco_day, GRID)
    assert out["weight"].sum() == pytest.approx(300.0, rel=1e-12)
    assert out["n_soundings"].sum() > 2 * 300  # the cell count that used to be the sample count
    rng = np.random.default_rng(5)
    gosat_day = pd.DataFrame([gosat(la, lo, xco2=x) for la, lo, x in zip(
        rng.uniform(30.1, 30.4, 12), rng.uniform(104.1, 104.4, 12), rng.normal(412, 1, 12))])
    out = grid_soundings(gosat_day, GRID)
    assert out["weight"].sum() == pytest.approx(12.0, rel=1e-12)
    assert out["n_soundings"].sum() > 70 * 12
    # A lone GOSAT footprint: every cell holds 1 / (its ~80 cells).
    lone = grid_soundings(pd.DataFrame([gosat(*centre(25, 25))]), GRID)
    assert lone["weight"].to_numpy() == pytest.approx(np.full(len(lone), 1.0 / len(lone)))
    # Footprints sharing cells: the shared cell holds both shares.
    top, left = centre(10, 10)
    two = grid_soundings(pd.DataFrame([
        oco(box(top - 0.005, top + 0.005, left - 0.004, left + 0.014)),   # (10,10) and (10,11)
        oco(box(top - 0.005, top + 0.005, left + 0.006, left + 0.014)),   # (10,11) only
    ]), GRID).set_index("cell")["weight"]
    assert two.tolist() == pytest.approx([0.5, 1.5])


def test_a_footprint_cut_by_the_grid_edge_counts_its_inside_share():
    out = grid_soundings(pd.DataFrame([gosat(30.49, 104.01)]), GRID)
    footprints = sounding_footprints(pd.DataFrame([gosat(30.49, 104.01)]), GRID)
    assert 0.15 < out["weight"].sum() < 0.5  # about a quarter of the disc lies inside
    assert footprints["weight"].sum() == pytest.approx(out["weight"].sum())
    assert footprints["cell"].tolist() == out["cell"].tolist()
