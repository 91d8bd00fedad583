"""No network pass where the champion's network share is 0 (issue 23), and the reduced-precision choice.

The map of a share-0 champion is background + daily-anomaly field: the background cut out of the
champion's own graph must give the same bits as the full graph, so the maps are the same bytes.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch

from models.background import Background
from models.onnx_export import export_onnx, mapping_metadata
from tasks.mapping.onnx_runtime import (FP32, INT8_DYNAMIC, OnnxPredictor, choose_precision, columns_used, network_free_graph,
                                 precision_gate, reduced_precision_support)
from models.residual_field import ResidualField
from models.resnet_lstm import ResNetLSTM
from models.scaling import Scalers
from models.training import TrainedModel
from models.uncertainty import SpreadModel, SpreadNetwork
from tasks.archive import write_day_cog
from tasks.covariates.features import FEATURE_NAMES, FEATURE_SET_VERSION, DayLayers
from tasks.gridding.geometry import Grid
from tasks.mapping.inference import TimeLocationLayers, predict_day, reads_only_time_location

# /proc/cpuinfo flag lines, shortened: this machine's kind (AMD EPYC Zen 3 under KVM: AVX2, no
# AVX-512) and three with reduced-precision instructions.
EPYC_AVX2 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
             "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt "
             "aes xsave avx f16c rdrand hypervisor lahf_lm abm sse4a bmi1 avx2 smep bmi2 erms invpcid rdseed adx "
             "smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero vaes vpclmulqdq rdpid fsrm\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                   "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni "
                   "avx512_bf16 avx_vnni amx_bf16 avx512_fp16 amx_tile amx_int8\n")
COOPER_LAKE = "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16\n"
ALDER_LAKE = "flags\t\t: fpu sse sse2 avx avx2 fma avx_vnni\n"

BACKGROUND = Background((410.0, 2.4, 1.1, -0.6, 0.3, 0.1, 0.35, -0.25), 5.4, 30.8, 104.2)
FIELD = ResidualField(0.8, 60.0, 3.0, 0.2, 400.0, 20.0, 0.05, 0.1)


def _trained(share: float, background: Background | None = BACKGROUND) -> TrainedModel:
    """Table 4 at the production features with random weights (what is compared is the graph's
    arithmetic, not skill), a background, a daily-anomaly field and an uncertainty head."""
    n = len(FEATURE_NAMES)
    torch.manual_seed(0)
    network = ResNetLSTM(n).eval()
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, n)
    std = rng.uniform(0.5, 2, n)
    for name, m, s in (("latitude", 30.8, 0.5), ("longitude", 104.2, 0.5), ("years_since_2015", 5.4, 0.1),
                       ("doy_sin", 0.4, 0.2), ("doy_cos", -0.8, 0.2)):
        mean[FEATURE_NAMES.index(name)], std[FEATURE_NAMES.index(name)] = m, s
    scalers = Scalers(tuple(mean), tuple(std), 0.0, 1.5)
    return TrainedModel(network, scalers, tuple(FEATURE_NAMES), FEATURE_SET_VERSION, [{"val_loss": 1.0}], 1,
                        spread=SpreadModel(SpreadNetwork(n, 0.8).eval(), scale=1.2), background=background,
                        anomaly_scale=share, residual_field=FIELD if background is not None else None)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("network-free")
    return {share: export_onnx(_trained(share), root / f"share{share}.onnx") for share in (0.0, 1.0)}


def _layers(grid: Grid, day: date) -> DayLayers:
    rng = np.random.default_rng(4)
    n = len(FEATURE_NAMES) - 5
    return DayLayers(day, rng.normal(size=(n - 9, *grid.shape)).astype(np.float32),
                     rng.normal(size=(4, *grid.shape)).astype(np.float32),
                     rng.normal(size=(5, *grid.shape)).astype(np.float32), grid.lats, grid.lons)


def test_reduced_precision_is_read_from_the_cpuinfo_flags():
    assert reduced_precision_support(EPYC_AVX2) is None  # AVX2 only: fp32
    assert reduced_precision_support("") is None
    assert reduced_precision_support(SAPPHIRE_RAPIDS) == "amx_int8"
    assert reduced_precision_support(COOPER_LAKE) == "avx512_bf16"
    assert reduced_precision_support(ALDER_LAKE) == "avx_vnni"
    # A flag is a whole word: avx512_vnni is not avx_vnni's prefix, avx512f is not avx512_bf16.
    assert reduced_precision_support("flags : avx512f avx512_vnnix\n") is None


def test_the_parity_gate_decides_both_ways():
    reference = {"xco2": np.array([410.0, 411.0], np.float32), "xco2_uncertainty": np.array([1.0, 2.0], np.float32)}
    close = {"xco2": reference["xco2"] + np.float32(0.03), "xco2_uncertainty": reference["xco2_uncertainty"]}
    far = {**close, "xco2_uncertainty": reference["xco2_uncertainty"] + np.float32(0.08)}
    ok, worst = precision_gate(reference, close)
    assert ok and worst == pytest.approx(0.03, abs=1e-4)
    ok, worst = precision_gate(reference, far)  # the second output alone fails it
    assert not ok and worst == pytest.approx(0.08, abs=1e-4)
    assert precision_gate(reference, {"xco2": reference["xco2"]}) == (False, float("inf"))  # an output missing
    nan = {**close, "xco2": np.array([np.nan, 411.0], np.float32)}
    assert not precision_gate(reference, nan)[0]


def test_choose_precision_follows_the_processor_and_the_gate(exports):
    fp32 = OnnxPredictor(exports[1.0], prefer_cuda=False)
    assert choose_precision(fp32, EPYC_AVX2) is fp32  # no reduced-precision instructions
    # With them: the int8 graph whenever it is within the gate, fp32 when it is not (a gate of 0
    # ppm no quantized network meets). The speed check is off: this CPU's int8 is not faster.
    chosen = choose_precision(fp32, SAPPHIRE_RAPIDS, tolerance_ppm=1e6, require_faster=False, probe_rows=256)
    assert chosen is not fp32 and chosen.precision == INT8_DYNAMIC and chosen.network_pass
    X = np.random.default_rng(7).normal(size=(300, len(FEATURE_NAMES))).astype(np.float32)
    out, ref = chosen.run(X), fp32.run(X)
    assert set(out) == set(ref) and np.all(np.isfinite(out["xco2"]))
    assert choose_precision(fp32, SAPPHIRE_RAPIDS, tolerance_ppm=0.0, require_faster=False,
                            probe_rows=256) is fp32
    assert fp32.precision == FP32


def test_the_background_cut_is_bit_for_bit_the_full_graph(exports):
    full = OnnxPredictor(exports[0.0], prefer_cuda=False)
    cut = full.without_network()
    assert cut is not None and not cut.network_pass and cut.output_names == ["xco2"]
    assert reads_only_time_location(cut.columns) and len(cut.columns) == 5
    X = np.random.default_rng(8).normal(size=(5000, len(FEATURE_NAMES))).astype(np.float32)
    X[:, -5:] = [30.5, 104.0, 5.5, 0.3, -0.9] + X[:, -5:] * [1.0, 1.0, 0.2, 0.1, 0.1]
    want = full.run(X)
    assert np.array_equal(cut.run(X)["xco2"].view(np.uint32), want["xco2"].view(np.uint32))
    # Kept with its uncertainty (no field to replace it): the spread network reads every column.
    with_sigma = full.without_network(keep_uncertainty=True)
    assert with_sigma is not None and with_sigma.columns is None
    got = with_sigma.run(X)
    assert np.array_equal(got["xco2"], want["xco2"]) and np.array_equal(got["xco2_uncertainty"],
                                                                        want["xco2_uncertainty"])
    assert full.for_mapping() is cut and full.without_network() is cut  # built once


def test_a_network_in_the_map_is_never_cut(exports, tmp_path):
    shared = OnnxPredictor(exports[1.0], prefer_cuda=False)
    assert shared.without_network() is None
    assert shared.for_mapping(keep_uncertainty=True).network_pass
    import onnx

    # The graph itself: only a Mul by exactly 0 marks the network's term as absent.
    assert network_free_graph(onnx.load(str(exports[1.0]))) is None
    no_background = export_onnx(dataclasses.replace(_trained(1.0, None), anomaly_scale=0.0), tmp_path / "nb.onnx")
    assert OnnxPredictor(no_background, prefer_cuda=False).without_network() is None
    assert columns_used(onnx.load(str(exports[0.0]))) is None  # the full graph reads every column


@pytest.mark.parametrize("boundary", [False, True])
def test_a_share_0_day_maps_to_the_same_cog_pixels_both_ways(exports, tmp_path, boundary):
    """predict_day + the COG, full graph over every covariate vs the cut over the calendar and the
    cell centres only: the same pixel bits (inside a province-like boundary and over the whole box)."""
    grid = Grid(west=103.6, south=30.5, east=104.2, north=31.0, step=0.01)
    day = date(2020, 6, 17)
    inside = None
    if boundary:
        yy, xx = np.mgrid[:grid.ny, :grid.nx]
        inside = (yy - grid.ny / 2) ** 2 / (grid.ny / 2.2) ** 2 + (xx - grid.nx / 2) ** 2 / (grid.nx / 2.5) ** 2 < 1
    full = OnnxPredictor(exports[0.0], prefer_cuda=False)
    cut = full.for_mapping()
    assert not cut.network_pass
    one = predict_day(full, _layers(grid, day), grid, 4096, inside=inside)
    two = predict_day(cut, TimeLocationLayers(day, grid.lats, grid.lons), grid, 4096, inside=inside)
    field = np.random.default_rng(9).normal(0, 0.5, grid.shape).astype(np.float32)  # a daily anomaly
    pixels = []
    for name, prediction in (("full", one), ("cut", two)):
        path = write_day_cog(tmp_path / f"{name}.tif", prediction.xco2 + field, grid, {"units": "ppm"})
        with rasterio.open(path) as src:
            pixels.append(src.read(1))
    assert np.isfinite(pixels[0]).sum() == (inside.sum() if boundary else grid.n_cells)
    assert np.array_equal(pixels[0].view(np.uint32), pixels[1].view(np.uint32))


# --- a day through map_day, on a demo world --------------------------------------------------------

class FullGraphOnly:
    """The champion's predictor as map_day had it before issue 23: every call runs the full graph."""

    def __init__(self, predictor: OnnxPredictor) -> None:
        self._p = predictor
        self.output_names, self.provider = predictor.output_names, predictor.provider

    def run(self, features, batch_size=None):
        return self._p.run(features, batch_size)

    def cells_per_batch(self, requested):
        return self._p.cells_per_batch(requested)


@pytest.mark.slow
def test_map_day_of_a_share_0_champion_is_the_same_map_without_the_network(prefect_harness, tmp_path, caplog):
    """A day of a small demo world mapped by map_day twice, into two archives: once with the full
    graph (as before), once as it runs now (no network pass); the COG pixel arrays, both bands, are
    the same bits. Each run has its own residual cache (another champion version), so the daily
    anomaly's predictions at the observations are made both ways too."""
    import logging

    from demo_world import write_demo_world
    from flows.daily import daily_update
    from flows.demo import SMALL_REGION
    from tasks.archive import day_cog_path
    from tasks.mapping.day import map_day
    from tasks.settings import load_settings

    start, end, day = date(2020, 6, 1), date(2020, 6, 6), date(2020, 6, 4)
    overrides = {"data_dir": str(tmp_path / "data"), "source": "demo", "seed": 20200601,
                 "region": SMALL_REGION.model_dump()}
    settings = load_settings(**overrides)
    write_demo_world(settings.data_dir / "demo", settings.region, start, end, grid_step=settings.grid_step,
                     seed=20200601, dense=True)
    daily_update(start=start.isoformat(), end=end.isoformat(), overrides=overrides)
    grid = Grid.for_region(settings.region, settings.grid_step)
    trained = _trained(0.0)
    onnx_path = export_onnx(trained, tmp_path / "champion.onnx")
    pixels = {}
    for version, predictor in ((901, FullGraphOnly(OnnxPredictor(onnx_path, prefer_cuda=False))),
                               (902, OnnxPredictor(onnx_path, prefer_cuda=False))):
        champion = SimpleNamespace(name="share0", version=version, mapping=mapping_metadata(trained),
                                   train_last_day=start, onnx_path=onnx_path)
        run = load_settings(**overrides, archive_dir=str(tmp_path / f"archive-{version}"))
        # Prefect's logging setup stops propagation to the root: the handler goes on the logger itself.
        logger = logging.getLogger("tasks.mapping.day")
        logger.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="tasks.mapping.day"):
                row = map_day(run, grid, day, predictor, champion)
        finally:
            logger.removeHandler(caplog.handler)
        assert row["network_pass"] is (version == 901)
        with rasterio.open(day_cog_path(run.archive_root, run.region.name, day)) as src:
            pixels[version] = src.read()
            tags = src.tags()
        assert tags["network_pass"] == ("yes" if version == 901 else
                                        "no (network share 0: background + daily anomaly)")
        assert int(tags["daily_anomaly_superobs"]) > 0  # the field is part of what is compared
    assert "no network pass" in caplog.text
    assert pixels[901].shape[0] == 2 and np.isfinite(pixels[901][0]).sum() > 100
    assert np.array_equal(pixels[901].view(np.uint32), pixels[902].view(np.uint32))


def test_the_field_solved_only_under_the_boundary_is_the_same_field():
    """predict_map_with_background krige only the lattice nodes a cell inside the boundary reads:
    inside, the same bits as the field solved over the whole box; outside, nodata."""
    from models.residual_field import Superobs, predict_map_with_background

    rng = np.random.default_rng(0)
    n = 200
    obs = Superobs(rng.uniform(103, 105, n), rng.uniform(30, 31.5, n), 18400.0 + rng.integers(-3, 4, n),
                   rng.normal(0, 1, n), rng.uniform(1, 5, n))
    lons, lats = np.arange(103.005, 105, 0.01), np.arange(30.005, 31.5, 0.01)
    yy, xx = np.mgrid[:len(lats), :len(lons)]
    inside = (yy - len(lats) / 2) ** 2 / (len(lats) / 2.2) ** 2 + (xx - len(lons) / 3) ** 2 / (len(lons) / 4) ** 2 < 1
    box = predict_map_with_background(FIELD, obs, 30.7, lons, lats, 18400.0, BACKGROUND, None)
    province = predict_map_with_background(FIELD, obs, 30.7, lons, lats, 18400.0, BACKGROUND, inside)
    for whole, masked in zip(box, province):
        assert np.all(np.isfinite(whole)) and np.isnan(masked[~inside]).all()
        assert np.array_equal(whole[inside], masked[inside])
