"""Where decoded images are kept: memory when they fit, else a file in the
cache folder (reused by a later run), none when the file cannot be made."""

import logging

from kerastune_lab.data import cache


def test_memory_when_it_fits_else_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "available_memory", lambda: 10 * 8 * 8 * 3 * 4)
    monkeypatch.setattr(cache, "_reserved", [0])  # caches of earlier tests left out
    small = cache.ImageCache.create(10, 8, key="k1")  # 1,920 bytes: half of what is free
    assert small.where == "memory"
    big = cache.ImageCache.create(11, 8, key="k2")  # does not fit beside it
    assert big.where == str(tmp_path / "images" / "k2-8px.u8")
    big.images[3] = 7
    big.kept[3] = True
    again = cache.ImageCache.create(11, 8, key="k2", mode="file")
    assert again.kept.tolist() == [False] * 3 + [True] + [False] * 7
    assert int(again.images[3].max()) == 7
    assert cache.ImageCache.create(11, 8, key="k2", mode="none") is None


def test_no_cache_when_the_folder_cannot_be_written(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        store = cache.ImageCache.create(4, 8, key="k", mode="file", folder=str(blocker / "sub"))
    assert store is None and "images not cached" in caplog.text
