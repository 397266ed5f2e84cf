"""Tiles: native-resolution grids, blank and glare tiles dropped, huge fields counted before decoding, tile lists
made once and made again when damaged or edited."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TINY_DATA
from leukexp.data.augment import OfflineViews
from leukexp.data.fold_data import build_fold_data
from leukexp.data.tiles import GRID_COLUMNS, TileBags, TileViews, Tiling
from leukexp.errors import LeukexpError


def test_tiles_cover_the_image_at_native_resolution_and_blank_ones_are_dropped() -> None:
    tiling = Tiling(64, 64)
    grid = tiling.grid(150, 200)
    assert len(grid) == 2 * 3 and tiling.box(grid[-1]) == (128, 64, 64, 64)
    assert tiling.box(GRID_COLUMNS + 1) == (64, 64, 64, 64)
    image = np.full((150, 200, 3), 230, np.uint8)  # empty glass ...
    cv2.circle(image, (160, 100), 25, (90, 40, 120), -1)  # ... and one cell, in the tile at column 2, row 1
    kept = TileBags(tile=64).kept_tiles(image, "field.png")
    assert [tiling.box(t)[:2] for t in kept] == [(128, 64)]
    with pytest.raises(LeukexpError, match=r"^field\.png: 50x40 px is smaller than one tile \(bags\.tile=64\)"):
        TileBags(tile=64).kept_tiles(np.zeros((40, 50, 3), np.uint8), "field.png")


def test_a_tile_view_is_its_crop_and_its_key_names_its_box() -> None:
    views = TileViews(Tiling(32, 16), OfflineViews(repeats=0))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    index = views.view_index(GRID_COLUMNS + 2, 0)  # row 1, column 2: (32, 16)
    assert np.array_equal(views.apply(image, index, "k"), image[16:48, 32:64])
    assert views.view_fingerprint(index) == "tile@32,16+32x32|original"
    assert views.split(index) == (GRID_COLUMNS + 2, 0)


@pytest.mark.parametrize("damage", [b"\x00\xff{not json", b'{"abc": "1,2"}', b'[1, 2]', b'{"abc": [-1]}'])
def test_a_damaged_tile_list_file_is_made_again(compose_plan, tmp_path: Path, damage: bytes) -> None:
    args = [*TINY_DATA, "bags=tiles", "bags.tile=32", "head=abmil", "task=binary", "augmentation=none",
            "fold.n_splits=2"]
    first = build_fold_data(compose_plan(*args)).bags.instances
    (store,) = (tmp_path / "cache" / "tiles").glob("*.json")
    store.write_bytes(damage)
    again = build_fold_data(compose_plan(*args)).bags.instances
    assert again.equals(first)
    assert store.read_text().startswith("{") and "abc" not in store.read_text()


def one_colour_png(path: Path, width: int, height: int, grey: int = 0) -> Path:
    """A real PNG of one grey level, encoded a row at a time (a 10,000 x 10,000 field is ~400 KB on disk and 300 MB
    decoded, without this test ever holding the pixels)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, body = zlib.compressobj(9), b"\x00" + bytes([grey]) * width, []
    body = [packer.compress(row) for _ in range(height)] + [packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(("height", "width"), [(8, 40_000), (40_000, 8)])
def test_the_tiles_of_a_very_wide_or_tall_image_lie_inside_it_and_are_distinct(height: int, width: int) -> None:
    tiling = Tiling(4, 4)  # 10,000 tile columns (or rows): the old 4,096-column grid aliased them
    grid = tiling.grid(height, width)
    boxes = [tiling.box(t) for t in grid]
    assert len(grid) == (height // 4) * (width // 4) == len(set(boxes))
    assert all(x >= 0 and x + w <= width and y >= 0 and y + h <= height for x, y, w, h in boxes)
    covered = {(x, y) for x, y, _, _ in boxes}
    assert covered == {(x, y) for x in range(0, width - 3, 4) for y in range(0, height - 3, 4)}, "every part tiled"
    views = TileViews(tiling, OfflineViews(repeats=0))
    assert views.split(views.view_index(grid[-1], 0)) == (grid[-1], 0)


def test_the_candidate_tiles_of_a_huge_field_are_counted_from_its_header_before_decoding(tmp_path: Path) -> None:
    import tracemalloc

    import pandas as pd

    field = one_colour_png(tmp_path / "field.png", 10_000, 10_000, 200)
    assert field.stat().st_size < 1_000_000
    frame = pd.DataFrame({"path": [str(field)], "file": ["HLT/field.png"], "sha1": ["x"]})
    tracemalloc.start()
    with pytest.raises(LeukexpError, match=r"^HLT/field\.png: 10,000 x 10,000 px cut into 2 px tiles every 2 px is"
                                           r" 25,000,000 candidate tiles, more than bags\.max_candidates=1,000,000"):
        TileBags(tile=2)._list_tiles(frame, [0])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20_000_000, "refused before the 300 MB of pixels were decoded"


def test_a_tiling_pass_holds_memory_of_the_field_not_of_its_tiles() -> None:
    import tracemalloc

    rng = np.random.default_rng(0)
    field = rng.integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
    bags = TileBags(tile=4, stride=2, max_candidates=2_000_000, max_tiles=64)
    tracemalloc.start()
    kept = bags.kept_tiles(field, "field.png")  # 999 x 999 = 998,001 candidate tiles
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(kept) == 64
    assert peak < 3 * field.nbytes, f"peak {peak / 1e6:.0f} MB for a {field.nbytes / 1e6:.0f} MB field"


def test_a_stop_ends_tiling_between_bands() -> None:
    import threading

    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        TileBags(tile=4).kept_tiles(np.zeros((64, 64, 3), np.uint8), "field.png", stop)


def test_grey_levels_out_of_range_and_blank_fields_are_named_by_their_key() -> None:
    with pytest.raises(LeukexpError, match=r"^bags\.max_mean=-1: expected a grey level from 0 to 255"):
        TileBags(max_mean=-1)
    with pytest.raises(LeukexpError, match=r"^bags\.min_std=300: expected a grey level"):
        TileBags(min_std=300)
    glare = np.full((64, 64, 3), 255, np.uint8)
    glare[::10] = 200  # structure (grey std ~16), but glare (mean ~249)
    with pytest.raises(LeukexpError, match=r"every tile is blank \(mean grey above bags\.max_mean=245\)"):
        TileBags(tile=32).kept_tiles(glare, "glare.png")
    with pytest.raises(LeukexpError, match=r"every tile is blank \(grey std below bags\.min_std=6\)"):
        TileBags(tile=32).kept_tiles(np.full((64, 64, 3), 100, np.uint8), "flat.png")


def test_an_edited_tile_list_file_is_made_again(compose_plan, tmp_path: Path) -> None:
    import json

    args = [*TINY_DATA, "bags=tiles", "bags.tile=32", "head=abmil", "task=binary", "augmentation=none",
            "fold.n_splits=2"]
    first = build_fold_data(compose_plan(*args)).bags.instances
    (store,) = (tmp_path / "cache" / "tiles").glob("*.json")
    saved = json.loads(store.read_text())
    key = next(iter(saved["tiles"]))
    saved["tiles"][key] = [GRID_COLUMNS * 1000]  # a tile far outside its image, checksum left as it was
    store.write_text(json.dumps(saved))
    again = build_fold_data(compose_plan(*args)).bags.instances
    assert again.equals(first), "the edited list was not trusted"
