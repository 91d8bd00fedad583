"""Issue 10 case 1: a full disk must never publish a corrupt archive file.

A disk filling up mid-write is reproduced without root: the writer runs in a subprocess whose
RLIMIT_FSIZE is below the file's size, with SIGXFSZ ignored, so writes past the limit fail with
EFBIG as they would with ENOSPC. GDAL returns normally from some of those COG writes (the
tiles that did not fit are simply missing), which is what published corrupt days before.
Each case asserts: an error naming the final path, the previous version byte-identical (or no
file at all), no temp litter, and a rerun without the limit publishing exactly the bytes of an
undisturbed write.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tasks.archive import day_cog_path, quicklook_png, upsert_day_item, validate_cog, write_day_cog
from tasks.archive.cog import ArchiveWriteError
from tasks.io.atomic import PublishError, atomic_path, publish_text, save_npy, write_json
from tasks.gridding.geometry import Grid

ROOT = Path(__file__).resolve().parents[2]
REGION = "faultland"
DAY = date(2024, 5, 2)
GRID = Grid(west=104.0, south=30.6, east=104.2, north=30.8, step=0.01)  # 20 x 20 cells
TAGS = {"model_name": "xco2-resnet-lstm", "model_version": "3", "feature_set_version": "fs-1",
        "source_mode": "demo", "synthetic": "true", "date": DAY.isoformat()}
PROPERTIES = {k: TAGS[k] for k in ("model_name", "model_version", "feature_set_version", "source_mode", "synthetic")}

# Run in a child process under a file-size limit; the archive call comes as `call`.
CHILD = textwrap.dedent("""
    import resource, signal, sys
    from datetime import date
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {root!r})
    from tasks.archive import day_cog_path, quicklook_png, upsert_day_item, write_day_cog
    from tasks.gridding.geometry import Grid
    grid = Grid(west=104.0, south=30.6, east=104.2, north=30.8, step=0.01)
    xco2, uncertainty = np.load({arrays!r})["xco2"], np.load({arrays!r})["uncertainty"]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    {call}
""")


def day_fields(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xco2 = (415 + rng.normal(0, 0.4, GRID.shape)).astype(np.float32)
    xco2[:5, :7] = np.nan  # cells without an estimate must survive the read-back comparison
    uncertainty = rng.uniform(0.5, 1.5, GRID.shape).astype(np.float32)
    uncertainty[:5, :7] = np.nan
    return xco2, uncertainty


def run_limited(tmp_path: Path, limit: int, call: str, seed: int = 2) -> subprocess.CompletedProcess:
    arrays = tmp_path / f"fields-{seed}.npz"
    xco2, uncertainty = day_fields(seed)
    np.savez(arrays, xco2=xco2, uncertainty=uncertainty)
    script = CHILD.format(root=str(ROOT), arrays=str(arrays), limit=limit, call=call)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)


def all_names(folder: Path) -> list[str]:
    """Every entry, hidden temp files included."""
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.99], ids=["cut-in-band-1", "cut-in-band-2", "cut-at-the-end"])
def test_a_day_cut_short_by_a_full_disk_is_not_published(tmp_path, fraction):
    archive = tmp_path / "archive"
    path = day_cog_path(archive, REGION, DAY)
    write_day_cog(path, *day_fields(1)[:1], GRID, TAGS, uncertainty=day_fields(1)[1])
    previous = path.read_bytes()
    xco2, uncertainty = day_fields(2)
    undisturbed = write_day_cog(day_cog_path(tmp_path / "undisturbed", REGION, DAY), xco2, GRID, TAGS,
                                uncertainty=uncertainty)
    limit = int(undisturbed.stat().st_size * fraction)  # the disk fills part way through the day

    done = run_limited(tmp_path, limit, f"write_day_cog({str(path)!r}, xco2, grid, {TAGS!r}, uncertainty)")

    assert done.returncode != 0, done.stdout + done.stderr
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"tasks.archive.cog.ArchiveWriteError: {path}: not published"), done.stderr[-2000:]
    assert path.read_bytes() == previous  # the previous version of the day, untouched
    assert all_names(path.parent) == [path.name]  # no temp file, no GDAL side file
    assert validate_cog(path, GRID) == []

    # Space freed: the rerun publishes exactly what an undisturbed write makes.
    write_day_cog(path, xco2, GRID, TAGS, uncertainty=uncertainty)
    assert path.read_bytes() == undisturbed.read_bytes()
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), xco2)
        np.testing.assert_array_equal(src.read(2), uncertainty)


def test_a_first_day_that_does_not_fit_leaves_no_file(tmp_path):
    path = day_cog_path(tmp_path / "archive", REGION, DAY)
    done = run_limited(tmp_path, 2_000, f"write_day_cog({str(path)!r}, xco2, grid, {TAGS!r}, uncertainty)")
    assert done.returncode != 0 and f"ArchiveWriteError: {path}: not published" in done.stderr
    assert all_names(path.parent) == []


def test_the_stac_item_and_collection_are_not_published_cut_short(tmp_path):
    archive = tmp_path / "archive"
    path = write_day_cog(day_cog_path(archive, REGION, DAY), *day_fields(1)[:1], GRID, TAGS)
    item = upsert_day_item(archive, REGION, GRID, DAY, path, PROPERTIES)
    collection = archive / REGION / "collection.json"
    before = {p: p.read_bytes() for p in (item, collection)}

    changed = {**PROPERTIES, "model_version": "4"}
    done = run_limited(tmp_path, 1_000, f"upsert_day_item({str(archive)!r}, {REGION!r}, grid, "
                                        f"date(2024, 5, 2), {str(path)!r}, {changed!r})")

    assert done.returncode != 0
    assert f"ArchiveWriteError: {item}: not published" in done.stderr.strip().splitlines()[-1]
    assert "File too large" in done.stderr
    assert {p: p.read_bytes() for p in (item, collection)} == before
    assert all_names(path.parent) == sorted([path.name, item.name])
    assert not [p for p in (archive / REGION).iterdir() if p.name.endswith(".tmp")]

    upsert_day_item(archive, REGION, GRID, DAY, path, changed)  # space freed
    assert json.loads(item.read_text())["properties"]["xco2:model_version"] == "4"


def test_a_quicklook_cut_short_is_not_published(tmp_path):
    cog = write_day_cog(day_cog_path(tmp_path / "archive", REGION, DAY), *day_fields(1)[:1], GRID, TAGS)
    png = cog.parent / "quicklooks" / f"{cog.stem}.png"
    done = run_limited(tmp_path, 4_000, f"quicklook_png({str(cog)!r}, {str(png)!r}, 'XCO2')")
    assert done.returncode != 0 and f"ArchiveWriteError: {png}: not published" in done.stderr
    assert all_names(png.parent) == []
    assert quicklook_png(cog, png, "XCO2") == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_does_not_read_back_as_written_is_not_published(tmp_path, monkeypatch):
    """Storage that acknowledges writes but returns something else (a lying cache, bit rot
    between write and read-back): the verification, not the writer, catches it."""
    import tasks.archive.cog as cog_module

    path = day_cog_path(tmp_path, REGION, DAY)
    write_day_cog(path, *day_fields(1)[:1], GRID, TAGS)
    previous = path.read_bytes()
    real_open = rasterio.open

    class Garbled:
        def __init__(self, dataset):
            self._dataset = dataset

        def __getattr__(self, name):
            return getattr(self._dataset, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._dataset.close()

        def read(self, *args, **kwargs):
            values = self._dataset.read(*args, **kwargs)
            values.flat[123] += 1.0
            return values

    def garbling_open(target, mode="r", **kwargs):
        dataset = real_open(target, mode, **kwargs)
        return Garbled(dataset) if mode == "r" else dataset

    monkeypatch.setattr(cog_module.rasterio, "open", garbling_open)
    with pytest.raises(ArchiveWriteError, match=rf"{path}: not published: .*band 1 \(xco2\) reads back different"):
        write_day_cog(path, *day_fields(2)[:1], GRID, TAGS)
    monkeypatch.undo()
    assert path.read_bytes() == previous and all_names(path.parent) == [path.name]


# --- the shared write-verify-rename helper ---------------------------------------------------


def test_text_json_and_npy_writers_fail_on_a_full_disk_naming_the_file(tmp_path):
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from tasks.io.atomic import PublishError, publish_text, save_npy, write_json
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        for name, call in [("a.txt", lambda p: publish_text(p, "x" * 5000)),
                           ("b.json", lambda p: write_json(p, {{"k": "v" * 5000}})),
                           ("c.npy", lambda p: save_npy(p, np.zeros(1000)))]:
            try:
                call(name)
            except PublishError as exc:
                print(f"{{name}}|{{exc.errno}}|{{exc}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = [line.split("|", 2) for line in done.stdout.strip().splitlines()]
    assert [name for name, _, _ in lines] == ["a.txt", "b.json", "c.npy"], done.stdout + done.stderr
    for name, code, message in lines:
        assert message.startswith(f"{name}: not published: ") and "bytes free on its filesystem" in message
    # numpy reports the short write without an errno ("1000 requested and 234 written").
    assert [code for _, code, _ in lines] == [str(errno.EFBIG), str(errno.EFBIG), "None"]
    assert all_names(tmp_path) == []


def test_verify_failure_keeps_the_previous_file(tmp_path):
    path = publish_text(tmp_path / "state.json", '{"day": 1}')

    def refuse(temp: Path) -> None:
        raise ValueError("checksum mismatch")

    with pytest.raises(PublishError, match=r"state\.json: not published: .*ValueError: checksum mismatch"):
        with atomic_path(path, verify=refuse) as temp:
            temp.write_text('{"day": 2}')
    assert path.read_text() == '{"day": 1}' and all_names(tmp_path) == ["state.json"]


def test_writer_errors_that_are_not_storage_errors_keep_their_type(tmp_path):
    # Retry logic upstream tells a network failure from a disk failure by the exception's type.
    with pytest.raises(ConnectionResetError):
        with atomic_path(tmp_path / "granule.nc") as temp:
            temp.write_bytes(b"partial")
            raise ConnectionResetError(errno.ECONNRESET, "peer went away")
    with pytest.raises(PublishError) as caught:
        with atomic_path(tmp_path / "granule.nc") as temp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and str(caught.value).startswith(f"{tmp_path / 'granule.nc'}: ")
    assert all_names(tmp_path) == []


def test_publish_errors_survive_pickling_for_dask_and_prefect():
    error = ArchiveWriteError(Path("/archive/x.tif"), "No space left on device", errno.ENOSPC)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ArchiveWriteError and str(again) == str(error)
    assert again.errno == errno.ENOSPC and again.path == Path("/archive/x.tif") and isinstance(again, OSError)


def test_json_and_npy_read_back_equal_what_was_written(tmp_path):
    array = np.array([[1.0, np.nan], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(np.load(save_npy(tmp_path / "a.npy", array)), array)
    assert json.loads(write_json(tmp_path / "a.json", {"a": [1, 2]}).read_text()) == {"a": [1, 2]}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.npy"]
