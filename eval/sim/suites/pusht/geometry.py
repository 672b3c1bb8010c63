"""Geometry of the PushT block (the T) in its body frame: world units are pixels, all arrays
float64, points (..., 2). Used by the env (displacement checks) and the scripted expert."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["WORKSPACE", "AGENT_RADIUS", "TEE_RECTS", "TEE_OUTLINE", "rot", "dist_to_tee", "nearest_on_tee",
           "boxes", "inside_boxes", "segments_hit_boxes", "ray_exit", "Contacts", "make_contacts"]

WORKSPACE = 512.0  # world is [0, WORKSPACE]^2 pixels
AGENT_RADIUS = 15.0
# The T in its body frame (``gym_pusht.PushTEnv.add_tee``, scale 30): axis-aligned rectangles
# (xmin, ymin, xmax, ymax): the bar and the stem.
TEE_RECTS = np.array([[-60.0, 0.0, 60.0, 30.0], [-15.0, 30.0, 15.0, 120.0]])
# Its outline, counter-clockwise in a y-up frame (so the outward normal of edge (a, b) is
# (dy, -dx) / |b - a|).
TEE_OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], np.float64
)


def rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def dist_to_tee(points: np.ndarray) -> np.ndarray:
    """Euclidean distance (...,) from body-frame points (..., 2) to the T (0 inside)."""
    p = np.asarray(points, np.float64)[..., None, :]  # (..., 1, 2)
    lo, hi = TEE_RECTS[:, :2], TEE_RECTS[:, 2:]  # (2, 2)
    d = np.maximum(np.maximum(lo - p, p - hi), 0.0)  # (..., 2 rects, 2)
    return np.linalg.norm(d, axis=-1).min(axis=-1)


def nearest_on_tee(points: np.ndarray) -> np.ndarray:
    """Nearest point (..., 2) of the (filled) T to body-frame points (..., 2)."""
    p = np.asarray(points, np.float64)
    cand = np.clip(p[..., None, :], TEE_RECTS[:, :2], TEE_RECTS[:, 2:])  # (..., 2, 2)
    d = np.linalg.norm(cand - p[..., None, :], axis=-1)
    idx = d.argmin(axis=-1)
    return np.take_along_axis(cand, idx[..., None, None], axis=-2)[..., 0, :]


def boxes(clearance: float) -> tuple[np.ndarray, np.ndarray]:
    """The T's rectangles grown by ``clearance``: (lo (2, 2), hi (2, 2))."""
    return TEE_RECTS[:, :2] - clearance, TEE_RECTS[:, 2:] + clearance


def inside_boxes(points: np.ndarray, clearance: float) -> np.ndarray:
    """bool (...,): body-frame point inside a rectangle of the T grown by ``clearance``."""
    lo, hi = boxes(clearance)
    p = np.asarray(points, np.float64)[..., None, :]
    return ((p > lo) & (p < hi)).all(-1).any(-1)


def segments_hit_boxes(p0: np.ndarray, p1: np.ndarray, clearance: float) -> np.ndarray:
    """bool (...,): segment p0 -> p1 (body frame, (..., 2) each) meets a grown rectangle.

    A grown axis-aligned rectangle contains the rectangle's Minkowski sum with a disc of radius
    ``clearance``, so a segment that misses them keeps at least ``clearance`` from the T."""
    lo, hi = boxes(clearance)
    a = np.asarray(p0, np.float64)[..., None, :]
    d = np.asarray(p1, np.float64)[..., None, :] - a
    d = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t1, t2 = (lo - a) / d, (hi - a) / d
    t_in = np.minimum(t1, t2).max(-1)
    t_out = np.maximum(t1, t2).min(-1)
    return ((t_in < t_out) & (t_out > 0.0) & (t_in < 1.0)).any(-1)


def ray_exit(origin: np.ndarray, direction: np.ndarray, clearance: float) -> np.ndarray:
    """Distance s (...,) along unit rays until the point leaves every grown rectangle."""
    lo, hi = boxes(clearance)
    o = np.asarray(origin, np.float64)
    u = np.where(np.abs(direction) < 1e-12, 1e-12, direction)
    s = np.zeros(o.shape[:-1])
    for _ in range(3):  # leaving one rectangle may land in the other
        p = o + s[..., None] * direction
        inside = ((p[..., None, :] > lo) & (p[..., None, :] < hi)).all(-1)  # (..., 2)
        t_exit = np.maximum((lo - o[..., None, :]) / u[..., None, :], (hi - o[..., None, :]) / u[..., None, :]).min(-1)
        s = np.maximum(s, np.where(inside, t_exit, 0.0).max(-1))
    return s + 1e-6


@dataclass(frozen=True)
class Contacts:
    """Pushing contacts on the T outline, body frame. N candidates."""

    point: np.ndarray  # (N, 2) contact point on the outline
    normal: np.ndarray  # (N, 2) outward unit normal
    edge: np.ndarray  # (N,) outline edge index
    touch: np.ndarray  # (N, 2) agent centre touching the outline there
    exit: np.ndarray  # (N, 2) point on the outward normal ray clear of the grown rectangles


def make_contacts(spacing: float, radius: float, clearance: float) -> Contacts:
    pts, nrm, edge = [], [], []
    for k in range(len(TEE_OUTLINE)):
        a, b = TEE_OUTLINE[k], TEE_OUTLINE[(k + 1) % len(TEE_OUTLINE)]
        length = float(np.linalg.norm(b - a))
        t = (b - a) / length
        n = np.array([t[1], -t[0]])
        for s in np.arange(spacing / 2, length, spacing):
            pts.append(a + s * t)
            nrm.append(n)
            edge.append(k)
    point, normal, edge_ = np.array(pts), np.array(nrm), np.array(edge)
    touch = point + normal * radius
    ok = dist_to_tee(touch + normal * 0.5) >= radius  # the disc touches only this face
    point, normal, edge_, touch = point[ok], normal[ok], edge_[ok], touch[ok]
    exit_ = touch + normal * ray_exit(touch, normal, clearance)[:, None]
    return Contacts(point, normal, edge_, touch, exit_)
