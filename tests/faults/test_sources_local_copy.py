"""Issue 10, case 6: local mode must not share storage between the source directory and the raw
cache. Damage done to a source file after the pull (truncated or rewritten in place) leaves the
cached copy intact and matching the sha256 the manifest recorded."""

from __future__ import annotations

import os
from datetime import date

import pytest

from demo_world import write_gosat_c3s, write_oco_lite
from demo_world.fixtures import tiny_soundings
from tasks.readers import read_soundings
from tasks.settings import load_settings
from tasks.sources import Manifest, pull
from tasks.sources.manifest import sha256
from tasks.sources.remote import SourceError, copy_unshared

DAY = date(2020, 6, 1)


@pytest.fixture
def source(tmp_path):
    root = tmp_path / "downloads"
    write_oco_lite(root / "oco2", tiny_soundings("oco2", DAY), mission="oco2", day=DAY)
    write_gosat_c3s(root / "gosat", tiny_soundings("gosat", DAY), day=DAY)
    return root


def _ok_rows(settings):
    rows = Manifest(settings.manifest_path).load()
    return rows[rows["status"] == "ok"].set_index("product")


def test_truncating_the_source_leaves_the_cache_intact(tmp_path, source):
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    assert pull(settings, products=("oco2", "gosat")).n_fetched == 2
    rows = _ok_rows(settings)
    for product in ("oco2", "gosat"):
        original = next((source / product).iterdir())
        cached = settings.raw_dir / product / original.name
        assert not os.path.samefile(original, cached)
        assert os.stat(cached).st_nlink == 1  # no hard link left between the two
        size = original.stat().st_size
        with open(original, "r+b") as fh:  # damaged in place, as an operator's tool might
            fh.truncate(size // 4)
        assert cached.stat().st_size == size == rows.loc[product, "size"]
        assert sha256(cached) == rows.loc[product, "sha256"]
        assert len(read_soundings(cached)) > 0  # still a whole, readable granule


def test_rewriting_the_source_in_place_leaves_the_cache_intact(tmp_path, source):
    settings = load_settings(data_dir=str(tmp_path / "data"), source="local", local_dir=str(source))
    pull(settings, products=("oco2",))
    original = next((source / "oco2").iterdir())
    cached = settings.raw_dir / "oco2" / original.name
    before = sha256(cached)
    with open(original, "r+b") as fh:
        fh.seek(0)
        fh.write(b"\0" * 4096)
    assert sha256(cached) == before == _ok_rows(settings).loc["oco2", "sha256"]


def test_copy_is_whole_and_refuses_an_existing_target(tmp_path):
    src = tmp_path / "granule.nc4"
    payload = os.urandom(3 * (1 << 20) + 17)  # several copy_file_range / read chunks
    src.write_bytes(payload)
    dest = tmp_path / "cache" / "granule.nc4"
    dest.parent.mkdir()
    copy_unshared(src, dest)
    assert dest.read_bytes() == payload and not os.path.samefile(src, dest)
    with pytest.raises(FileExistsError):  # the pull hands a fresh temp path; never overwrite
        copy_unshared(src, dest)


def test_copy_falls_back_to_a_plain_copy(tmp_path, monkeypatch):
    remote = __import__("tasks.sources.remote", fromlist=["_reflink"])
    monkeypatch.setattr(remote, "_reflink", lambda a, b: False)
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    src = tmp_path / "granule.nc4"
    payload = os.urandom(1 << 20)
    src.write_bytes(payload)
    copy_unshared(src, tmp_path / "copy.nc4")
    assert (tmp_path / "copy.nc4").read_bytes() == payload


def test_a_source_shrinking_during_the_copy_is_not_cached(tmp_path, monkeypatch):
    remote = __import__("tasks.sources.remote", fromlist=["_copy_data"])
    src = tmp_path / "granule.nc4"
    src.write_bytes(os.urandom(1 << 20))
    real_copy = remote._copy_data

    def shrinking(fsrc, fdst, size):
        os.truncate(src, size // 2)  # another process cuts the file while we copy
        real_copy(fsrc, fdst, size)

    monkeypatch.setattr(remote, "_reflink", lambda a, b: False)
    monkeypatch.setattr(remote, "_copy_data", shrinking)
    with pytest.raises(SourceError, match="granule.nc4"):
        copy_unshared(src, tmp_path / "copy.nc4")
