"""Plane geometry for text detection, in numpy alone (no OpenCV): the connected regions of a bitmap as runs,
their convex hulls and minimum-area rectangles, and the order of corners."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Regions:
    """The 8-connected regions of a bitmap, stored as horizontal runs of set pixels."""

    rows: np.ndarray  # row of each run
    starts: np.ndarray  # first column of each run
    ends: np.ndarray  # last column of each run (inclusive)
    labels: np.ndarray  # region of each run, 0..count-1
    count: int

    def runs_of(self, region: int) -> np.ndarray:
        return np.flatnonzero(self.labels == region)


def runs(bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, starts, ends) of the horizontal runs of True in ``bitmap``, in row-major order."""
    padded = np.zeros((bitmap.shape[0], bitmap.shape[1] + 2), np.int8)
    padded[:, 1:-1] = bitmap
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return rows, starts, ends - 1


def connected_regions(bitmap: np.ndarray) -> Regions:
    """Label the 8-connected regions. Runs in adjacent rows that touch (diagonals included) are joined; labels
    spread as minima along those joins, with pointer jumping, until nothing changes (a few rounds for text)."""
    rows, starts, ends = runs(bitmap)
    n = len(rows)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Regions(empty, empty, empty, empty, 0)
    stride = bitmap.shape[1] + 3  # keys row * stride + column keep rows apart, columns -1..width+1 included
    start_keys, end_keys = rows * stride + starts + 1, rows * stride + ends + 1
    # For each run, the runs of the row above that it touches form one contiguous range [low, high).
    above = (rows - 1) * stride + 1
    low = np.searchsorted(end_keys, above + starts - 1, side="left")
    high = np.searchsorted(start_keys, above + ends + 1, side="right")
    counts = np.maximum(high - low, 0)
    child = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    parent = np.repeat(low, counts) + offsets
    labels = np.arange(n)
    while True:
        previous = labels
        joined = np.minimum(labels[child], labels[parent])
        labels = labels.copy()
        np.minimum.at(labels, child, joined)
        np.minimum.at(labels, parent, joined)
        labels = labels[labels]  # pointer jumping: a run takes its representative's label
        if np.array_equal(labels, previous):
            break
    _, dense = np.unique(labels, return_inverse=True)
    return Regions(rows, starts, ends, dense.ravel(), int(dense.max()) + 1)


def region_points(regions: Regions, members: np.ndarray) -> np.ndarray:
    """The pixel centres at both ends of each run of a region: enough for its convex hull."""
    rows = regions.rows[members]
    return np.concatenate([np.stack([regions.starts[members], rows], 1),
                           np.stack([regions.ends[members], rows], 1)]).astype(np.float64)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise in image axes, no repeated first point."""
    unique = np.unique(points, axis=0)
    if len(unique) <= 2:
        return unique

    def half(sequence):
        chain: list = []
        for p in sequence:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain

    ordered = [tuple(p) for p in unique]  # np.unique sorts by x, then y
    lower, upper = half(ordered), half(reversed(ordered))
    return np.array(lower[:-1] + upper[:-1], np.float64)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The rectangle of least area around ``points`` (rotating calipers over the hull's edge directions):
    (four corners in clockwise order from the top left, long side, short side)."""
    hull = convex_hull(points)
    if len(hull) == 1:
        return np.repeat(hull, 4, axis=0), 0.0, 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    keep = lengths > 0
    directions = edges[keep] / lengths[keep, None]
    normals = np.stack([-directions[:, 1], directions[:, 0]], 1)
    along, across = hull @ directions.T, hull @ normals.T  # (points, candidates)
    widths = along.max(0) - along.min(0)
    heights = across.max(0) - across.min(0)
    best = int(np.argmin(widths * heights))
    u, v = directions[best], normals[best]
    a0, a1 = along[:, best].min(), along[:, best].max()
    b0, b1 = across[:, best].min(), across[:, best].max()
    corners = np.array([a0 * u + b0 * v, a1 * u + b0 * v, a1 * u + b1 * v, a0 * u + b1 * v])
    width, height = widths[best], heights[best]
    return order_corners(corners), float(max(width, height)), float(min(width, height))


def order_corners(corners: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left (image axes, y down), for a near-horizontal box."""
    by_x = corners[np.argsort(corners[:, 0], kind="stable")]
    left, right = by_x[:2], by_x[2:]
    top_left, bottom_left = left[np.argsort(left[:, 1], kind="stable")]
    top_right, bottom_right = right[np.argsort(right[:, 1], kind="stable")]
    return np.array([top_left, top_right, bottom_right, bottom_left], np.float64)


def expand_rect(corners: np.ndarray, distance: float) -> np.ndarray:
    """A rectangle grown by ``distance`` on every side (DB's unclip of a rectangle: offsetting its outline by
    ``distance`` with round joins and taking the least-area rectangle around that gives exactly this)."""
    centre = corners.mean(0)
    u = corners[1] - corners[0]
    v = corners[3] - corners[0]
    u_len, v_len = np.hypot(*u), np.hypot(*v)
    u = u / u_len if u_len else np.array([1.0, 0.0])
    v = v / v_len if v_len else np.array([0.0, 1.0])
    half_u, half_v = (u_len / 2 + distance) * u, (v_len / 2 + distance) * v
    return np.array([centre - half_u - half_v, centre + half_u - half_v, centre + half_u + half_v,
                     centre - half_u + half_v])
