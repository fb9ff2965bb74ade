"""InternVL's dynamic tiling: how many square tiles an image becomes (counted from its size alone).

The grid of ``cols x rows`` tiles (``min_tiles <= cols * rows <= max_tiles``) whose aspect ratio is
closest to the image's wins; on a tie the later grid (more tiles) wins while the image's area is
more than half the grid's. A thumbnail (the whole image as one more tile) follows when the grid has
more than one tile. This is InternVL's ``dynamic_preprocess`` and transformers' GotOcr2 image
processor; the formatter counts tokens with it before decoding pixels, and the pixels themselves
come from that image processor (so they equal ``InternVLProcessor``'s).
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=16)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every ``(cols, rows)`` with a tile count in range, fewest tiles first (stable: cols, then rows)."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"min_dynamic_patch {min_tiles} / max_dynamic_patch {max_tiles}: need 1 <= min <= max")
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(height: int, width: int, tile_size: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """``(cols, rows)`` of the image's tiling."""
    ratio, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(ratio - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(height: int, width: int, tile_size: int, min_tiles: int, max_tiles: int) -> int:
    """Tiles the image becomes: the grid, plus the thumbnail when the grid has more than one tile."""
    cols, rows = choose_grid(height, width, tile_size, min_tiles, max_tiles)
    return cols * rows + (1 if cols * rows > 1 else 0)
