"""Digits as handwriting: stroke skeletons bent, slanted and jittered into a new hand every time.

The skeletons are a few control points per stroke in a unit box (x to the right, y downwards), in
the common ways people write each digit (a 1 with or without a flag, an open or closed 4, a 7 with
or without a bar...). `handwritten_digit` picks a variant, applies a random slant, rotation and
stretch, moves every control point a little, and smooths each stroke through its points with a
Catmull-Rom spline, so two draws of the same digit never coincide. Nothing here is derived from a
dataset of real handwriting: the transfer evaluation on real handwritten digits
(:mod:`cliplab.data.transfer`) stays unseen.
"""

from __future__ import annotations

import math
import random

Point = tuple[float, float]
Stroke = tuple[Point, ...]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 10, start: float = -90.0) -> Stroke:
    """Closed loop of `n` points (the first repeated at the end), starting at angle `start` degrees."""
    pts = [
        (
            cx + rx * math.cos(math.radians(start + 360 * k / n)),
            cy + ry * math.sin(math.radians(start + 360 * k / n)),
        )
        for k in range(n)
    ]
    return (*pts, pts[0])


# digit -> variants -> strokes -> control points. A repeated point makes a sharp corner.
DIGIT_STROKES: dict[str, tuple[tuple[Stroke, ...], ...]] = {
    "0": (
        (_ellipse(0.5, 0.5, 0.3, 0.45),),
        (_ellipse(0.5, 0.5, 0.24, 0.46, start=-110),),
    ),
    "1": (
        (((0.5, 0.04), (0.5, 0.96)),),
        (((0.3, 0.24), (0.52, 0.04), (0.52, 0.04), (0.52, 0.96)),),
        (((0.3, 0.24), (0.52, 0.04), (0.52, 0.04), (0.52, 0.96)), ((0.3, 0.96), (0.74, 0.96))),
    ),
    "2": (
        (((0.2, 0.26), (0.36, 0.07), (0.62, 0.05), (0.8, 0.24), (0.72, 0.46), (0.45, 0.7), (0.18, 0.95),
          (0.18, 0.95), (0.85, 0.95)),),
        (((0.22, 0.22), (0.45, 0.05), (0.74, 0.12), (0.74, 0.4), (0.4, 0.72), (0.2, 0.94), (0.36, 0.84),
          (0.6, 0.9), (0.86, 0.94)),),
    ),
    "3": (
        (((0.2, 0.14), (0.48, 0.03), (0.76, 0.15), (0.7, 0.38), (0.44, 0.48), (0.44, 0.48), (0.74, 0.56),
          (0.8, 0.8), (0.52, 0.97), (0.18, 0.86)),),
        (((0.2, 0.05), (0.8, 0.05), (0.8, 0.05), (0.46, 0.42), (0.74, 0.52), (0.8, 0.78), (0.52, 0.97),
          (0.2, 0.86)),),
    ),
    "4": (
        (((0.62, 0.04), (0.62, 0.04), (0.14, 0.66), (0.14, 0.66), (0.86, 0.66)), ((0.64, 0.3), (0.64, 0.96))),
        (((0.26, 0.04), (0.2, 0.6), (0.2, 0.6), (0.84, 0.6)), ((0.7, 0.04), (0.7, 0.96))),
    ),
    "5": (
        (((0.8, 0.05), (0.3, 0.05)), ((0.3, 0.05), (0.3, 0.05), (0.25, 0.46), (0.25, 0.46), (0.55, 0.38),
                                      (0.8, 0.56), (0.78, 0.82), (0.5, 0.97), (0.18, 0.88))),
        (((0.78, 0.05), (0.32, 0.05), (0.32, 0.05), (0.26, 0.44), (0.26, 0.44), (0.6, 0.42), (0.8, 0.66),
          (0.62, 0.93), (0.22, 0.9)),),
    ),
    "6": (
        (((0.72, 0.05), (0.42, 0.24), (0.22, 0.6), (0.3, 0.9), (0.55, 0.97), (0.78, 0.8), (0.72, 0.56),
          (0.45, 0.5), (0.24, 0.66)),),
        (((0.66, 0.04), (0.3, 0.4), (0.22, 0.75), (0.45, 0.97), (0.72, 0.86), (0.74, 0.62), (0.5, 0.52),
          (0.26, 0.64)),),
    ),
    "7": (
        (((0.16, 0.06), (0.84, 0.06), (0.84, 0.06), (0.42, 0.96)),),
        (((0.16, 0.1), (0.84, 0.06), (0.84, 0.06), (0.48, 0.96)), ((0.32, 0.52), (0.74, 0.5))),
        (((0.2, 0.2), (0.2, 0.06), (0.2, 0.06), (0.84, 0.06), (0.84, 0.06), (0.54, 0.5), (0.46, 0.96)),),
    ),
    "8": (
        (((0.5, 0.48), (0.74, 0.3), (0.66, 0.06), (0.34, 0.06), (0.26, 0.3), (0.5, 0.48), (0.78, 0.7),
          (0.66, 0.95), (0.34, 0.95), (0.22, 0.7), (0.5, 0.48)),),
        (_ellipse(0.5, 0.26, 0.2, 0.21, n=8, start=90), _ellipse(0.5, 0.72, 0.26, 0.25, n=8, start=-90)),
    ),
    "9": (
        (((0.76, 0.3), (0.5, 0.5), (0.26, 0.34), (0.36, 0.07), (0.66, 0.06), (0.78, 0.3), (0.78, 0.3),
          (0.72, 0.96)),),
        (((0.76, 0.28), (0.52, 0.48), (0.26, 0.32), (0.38, 0.06), (0.68, 0.08), (0.78, 0.3), (0.7, 0.7),
          (0.44, 0.96)),),
    ),
}  # fmt: skip


def _catmull_rom(points: Stroke, per_segment: int = 6) -> list[Point]:
    """A smooth curve through `points` (end points repeated as their own neighbours)."""
    if len(points) < 3:
        return list(points)
    p = [points[0], *points, points[-1]]
    out = [points[0]]
    for i in range(1, len(p) - 2):
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = p[i - 1], p[i], p[i + 1], p[i + 2]
        for s in range(1, per_segment + 1):
            t = s / per_segment
            t2, t3 = t * t, t * t * t
            out.append(
                (
                    0.5
                    * (
                        2 * x1
                        + (x2 - x0) * t
                        + (2 * x0 - 5 * x1 + 4 * x2 - x3) * t2
                        + (3 * x1 - x0 - 3 * x2 + x3) * t3
                    ),
                    0.5
                    * (
                        2 * y1
                        + (y2 - y0) * t
                        + (2 * y0 - 5 * y1 + 4 * y2 - y3) * t2
                        + (3 * y1 - y0 - 3 * y2 + y3) * t3
                    ),
                )
            )
    return out


def handwritten_digit(rng: random.Random, digit: str, jitter: float = 0.035) -> tuple[Stroke, ...]:
    """One hand's `digit`: smooth strokes as points in a unit box centred on (0.5, 0.5).

    The box is the glyph's height; widths vary with the random stretch. Control points move by up to
    `jitter` (of the height) each, independently, so loops open, bars tilt and curves wobble.
    """
    variants = DIGIT_STROKES[digit]
    strokes = variants[rng.randrange(len(variants))]
    slant = rng.uniform(-0.35, 0.3)  # x shift per unit of height above the middle (italic lean)
    angle = math.radians(rng.uniform(-12.0, 12.0))
    sx, sy = rng.uniform(0.7, 1.2), rng.uniform(0.88, 1.05)
    ca, sa = math.cos(angle), math.sin(angle)
    out = []
    for stroke in strokes:
        moved = []
        for x, y in stroke:
            x, y = x + rng.uniform(-jitter, jitter), y + rng.uniform(-jitter, jitter)
            x, y = (x - 0.5) * sx, (y - 0.5) * sy
            x -= slant * y
            moved.append((0.5 + x * ca - y * sa, 0.5 + x * sa + y * ca))
        if stroke[0] == stroke[-1] and len(stroke) > 2:  # a closed loop stays closed (or nearly)
            moved[-1] = (
                moved[0][0] + rng.uniform(-jitter, jitter),
                moved[0][1] + rng.uniform(-jitter, jitter),
            )
        out.append(tuple(_catmull_rom(tuple(moved))))
    return tuple(out)
