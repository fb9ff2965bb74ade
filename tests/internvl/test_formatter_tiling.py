"""InternVL's dynamic tiling counted from image sizes equals transformers' GotOcr2 image processor."""

from __future__ import annotations

import itertools

import pytest

from mm_internvl.tiling import candidate_grids, choose_grid, num_tiles

SIZES = [1, 13, 100, 223, 447, 448, 449, 896, 1000, 1344, 3000]


@pytest.mark.parametrize("limits", [(1, 12), (1, 6), (2, 4), (1, 1), (3, 12)])
def test_tile_counts_equal_transformers(limits):
    from transformers import GotOcr2ImageProcessor

    lo, hi = limits
    ip = GotOcr2ImageProcessor(size={"height": 448, "width": 448}, crop_to_patches=True)
    kw = {"min_patches": lo, "max_patches": hi}
    for h, w in itertools.product(SIZES, SIZES):
        assert num_tiles(h, w, 448, lo, hi) == ip.get_number_of_image_patches(h, w, kw), (h, w, limits)


def test_grids_and_ties():
    assert candidate_grids(1, 4) == ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1))
    assert choose_grid(448, 896, 448, 1, 12) == (2, 1)  # 2:1 -> two tiles side by side
    # a square image ties (1,1), (2,2), (3,3): more tiles while the image covers over half of them
    assert choose_grid(448, 448, 448, 1, 12) == (1, 1)
    assert choose_grid(1000, 1000, 448, 1, 12) == (3, 3)
    assert num_tiles(448, 448, 448, 1, 12) == 1 and num_tiles(1000, 1000, 448, 1, 12) == 10  # 9 + thumbnail
    with pytest.raises(ValueError, match="min_dynamic_patch"):
        candidate_grids(3, 2)
