"""One stable color per object id, so an object keeps its color through the whole video.

The palette is the 20 colors of matplotlib's "tab20" reordered so neighbours differ strongly;
object id ``i`` gets ``PALETTE[i % 20]``. It is documented in the README.
"""

from __future__ import annotations

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def color_for(object_id: int) -> tuple[int, int, int]:
    return PALETTE[object_id % len(PALETTE)]
