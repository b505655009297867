"""The preprocessed cache: keyed by content and parameters, atomic, bypassable, safe with several processes."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from PIL import Image

from breastfusion.data import cache as cache_module
from breastfusion.data.cache import ArrayCache, load_prepared
from breastfusion.data.preprocess import UltrasoundParams


def _png(path, seed):
    pixels = np.random.default_rng(seed).integers(30, 200, (60, 80), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls to the decoder."""
    calls = []
    real = cache_module.read_image
    monkeypatch.setattr(cache_module, "read_image", lambda p: calls.append(p) or real(p))
    return calls


def test_second_load_does_not_decode(tmp_path, decodes):
    cache, params = ArrayCache(tmp_path / "c"), UltrasoundParams(size=32)
    image = _png(tmp_path / "a.png", 0)
    first = load_prepared(image, params, cache=cache)
    second = load_prepared(image, params, cache=cache)
    assert np.array_equal(first, second) and len(decodes) == 1 and (cache.hits, cache.misses) == (1, 1)
    moved = image.rename(tmp_path / "renamed.png")
    load_prepared(moved, params, cache=cache)
    assert len(decodes) == 1  # keyed by content, not by name


def test_new_parameters_or_new_content_miss(tmp_path, decodes):
    cache = ArrayCache(tmp_path / "c")
    image = _png(tmp_path / "a.png", 0)
    load_prepared(image, UltrasoundParams(size=32), cache=cache)
    load_prepared(image, UltrasoundParams(size=48), cache=cache)
    _png(image, 1)
    load_prepared(image, UltrasoundParams(size=32), cache=cache)
    assert len(decodes) == 3 and cache.info().entries == 3


def test_no_cache_always_decodes_and_stores_nothing(tmp_path, decodes):
    cache = ArrayCache(tmp_path / "c", enabled=False)
    image = _png(tmp_path / "a.png", 0)
    for _ in range(2):
        load_prepared(image, UltrasoundParams(size=32), cache=cache)
    assert len(decodes) == 2 and cache.info().entries == 0


def test_a_corrupt_entry_is_recomputed(tmp_path):
    cache, params = ArrayCache(tmp_path / "c"), UltrasoundParams(size=32)
    image = _png(tmp_path / "a.png", 0)
    good = load_prepared(image, params, cache=cache)
    entry = next((tmp_path / "c").glob("*/*.npy"))
    entry.write_bytes(b"garbage")
    assert np.array_equal(load_prepared(image, params, cache=cache), good)


def test_info_and_clear(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    for i in range(3):
        load_prepared(_png(tmp_path / f"{i}.png", i), UltrasoundParams(size=16), cache=cache)
    info = cache.info()
    assert info.entries == 3 and info.bytes > 3 * 16 * 16
    assert cache.clear() == 3 and cache.info().entries == 0


def _fill(args):
    root, paths = args
    cache = ArrayCache(root)
    return [load_prepared(p, UltrasoundParams(size=24), cache=cache).sum() for p in paths]


def test_several_processes_share_one_cache(tmp_path):
    paths = [_png(tmp_path / f"{i}.png", i) for i in range(6)]
    with mp.get_context("spawn").Pool(2) as pool:
        sums = pool.map(_fill, [(tmp_path / "c", paths), (tmp_path / "c", paths[::-1])])
    assert sums[0] == sums[1][::-1]
    assert ArrayCache(tmp_path / "c").info().entries == 6
    assert not list((tmp_path / "c").glob("*/.tmp-*"))  # no half-written file is left
