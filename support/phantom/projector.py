"""Projection of the 3D thorax onto a detector: line integrals of attenuation per pixel.

Bulk anatomy (:class:`~support.phantom.primitives.Region`) is integrated exactly, ray by ray.
Thin structures (ribs, vessels, wires, catheters, vertebral elements) are :class:`TubeSet`
segments whose line integral across a circular section of radius ``r`` is
``2 sqrt(r^2 - d^2) / sin(theta)`` at distance ``d`` from the projected axis (``theta`` = angle
between the tube and the ray), widened to the pixel with the same integral so that sub-pixel
vessels keep their contrast; segments are rasterised together in one vectorised pass, each
only on the pixels near it.

Geometry is a point source: every shape is magnified by ``SID / (SID - distance to detector)``
of its own depth, so the heart is larger on an AP film and the far-side ribs double on a lateral.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from support.phantom.primitives import HalfSpace, Region, ViewMap, union_length

# Beam axis permutations: rows give (u, v, w) from (x, y, z).
_PERM = {
    "frontal": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]),    # u = x, v = -z, w = y
    "lateral": np.array([[0, -1.0, 0], [0, 0, -1.0], [1.0, 0, 0]]),   # u = -y, v = -z, w = x
}


@dataclasses.dataclass(frozen=True, eq=False)
class ViewGeometry:
    """One exposure: beam direction, patient rotation, magnification geometry, detector grid.

    ``origin`` is the patient point on the central ray (image centre); ``detector_w`` the
    detector plane's position along the ray axis in the rotated, unmagnified frame, and
    ``detector_side`` +1 when the beam travels towards +w (PA, left lateral), -1 for AP.
    """

    name: str
    size: int
    pixel_mm: float
    rotation: float
    origin: np.ndarray
    sid: float
    detector_w: float
    detector_side: int

    def __post_init__(self):
        if self.name not in _PERM:
            raise ValueError(f"view {self.name!r}: expected one of {sorted(_PERM)}")
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        object.__setattr__(self, "PR", _PERM[self.name] @ R)

    def local(self, pts: np.ndarray) -> np.ndarray:
        """Unmagnified view coordinates (u, v, w) of patient points (n, 3)."""
        return (np.atleast_2d(pts) - self.origin) @ self.PR.T

    def magnification(self, pts: np.ndarray) -> np.ndarray:
        w = self.local(pts)[:, 2]
        dist = self.detector_side * (self.detector_w - w)
        dist = np.clip(dist, 0.0, 0.8 * self.sid)
        return self.sid / (self.sid - dist)

    def view_map(self, M: float) -> ViewMap:
        return ViewMap(np.diag([M, M, 1.0]) @ self.PR, np.asarray(self.origin, float))

    @property
    def centres(self) -> np.ndarray:
        """Pixel-centre coordinates (mm) along u (columns) and v (rows); the grid is square."""
        return (np.arange(self.size) + 0.5 - self.size / 2) * self.pixel_mm


def _per_segment(value, n: int, name: str) -> np.ndarray:
    a = np.asarray(value, float)
    if a.ndim == 0:
        return np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"TubeSet: {name} has shape {a.shape}, expected a scalar or ({n},)")
    return a


@dataclasses.dataclass(eq=False)
class TubeSet:
    """Tube segments rendered together; inside one set a pixel takes its nearest segment (one
    bone, one catheter), between sets they add (a rib crossing another rib).

    ``inner_ratio``/``inner_mu`` subtract a concentric inner tube (marrow inside cortex, lumen
    inside a wall); ``caps`` rounds the segment ends; ``fade`` scales attenuation along the set
    (cartilage at a rib's anterior end).
    """

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    mu: float
    f0: np.ndarray | None = None
    f1: np.ndarray | None = None
    inner_ratio: float = 0.0
    inner_mu: float = 0.0
    caps: bool = True
    min_sin: float = 0.3
    tag: str | None = None
    views: tuple[str, ...] = ("frontal", "lateral")

    def __post_init__(self):
        self.p0 = np.asarray(self.p0, float).reshape(-1, 3)
        self.p1 = np.asarray(self.p1, float).reshape(-1, 3)
        n = len(self.p0)
        if len(self.p1) != n:
            raise ValueError(f"TubeSet: {n} start points but {len(self.p1)} end points")
        self.r0, self.r1 = _per_segment(self.r0, n, "r0"), _per_segment(self.r1, n, "r1")
        self.f0 = np.ones(n) if self.f0 is None else _per_segment(self.f0, n, "f0")
        self.f1 = np.ones(n) if self.f1 is None else _per_segment(self.f1, n, "f1")

    @staticmethod
    def polyline(points: np.ndarray, radii, mu: float, fade=None, **kw) -> "TubeSet":
        """Consecutive points joined; ``radii``/``fade`` per point (or scalars)."""
        pts = np.asarray(points, float)
        n = len(pts)
        r = np.broadcast_to(np.asarray(radii, float), (n,))
        f = np.ones(n) if fade is None else np.broadcast_to(np.asarray(fade, float), (n,))
        return TubeSet(pts[:-1], pts[1:], r[:-1], r[1:], mu, f[:-1], f[1:], **kw)

    @staticmethod
    def join(sets: Sequence["TubeSet"], **kw) -> "TubeSet":
        """Several polylines of the same material as one set."""
        first = sets[0]
        opts = dict(mu=first.mu, inner_ratio=first.inner_ratio, inner_mu=first.inner_mu,
                    caps=first.caps, min_sin=first.min_sin, tag=first.tag, views=first.views)
        opts.update(kw)
        cat = lambda name: np.concatenate([getattr(s, name) for s in sets])  # noqa: E731
        return TubeSet(cat("p0"), cat("p1"), cat("r0"), cat("r1"), f0=cat("f0"), f1=cat("f1"), **opts)

    def transformed(self, fn) -> "TubeSet":
        """The set with every point mapped by ``fn`` ((n, 3) -> (n, 3))."""
        return dataclasses.replace(self, p0=fn(self.p0), p1=fn(self.p1))

    def subset(self, keep: np.ndarray) -> "TubeSet":
        return dataclasses.replace(self, p0=self.p0[keep], p1=self.p1[keep], r0=self.r0[keep],
                                   r1=self.r1[keep], f0=self.f0[keep], f1=self.f1[keep])

    def __len__(self) -> int:
        return len(self.p0)


def _tube_profile(d2: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Chord across a tube of radius ``r`` at squared distance ``d2`` (pixel units), averaged
    over the pixel: a half-ellipse of radius ``rho = sqrt(r^2 + 1/4)`` whose area equals the
    tube's cross-section (``pi r^2``), so sub-pixel vessels keep their integrated attenuation.
    """
    rho2 = r * r + 0.25
    return (2.0 * r * r) * np.sqrt(np.maximum(1.0 - d2 / rho2, 0.0) / rho2)


def _capsule_pixels(ax, ay, bx, by, reach, n):
    """(segment, row, col) of every pixel whose centre may lie within ``reach`` of a segment.

    Row by row, the candidate columns are those inside the segment's rectangle widened by
    ``reach`` on all sides (a tight superset of the capsule), so few pixels are wasted.
    """
    ex, ey = bx - ax, by - ay
    ln = np.hypot(ex, ey)
    r_lo = np.clip(np.floor(np.minimum(ay, by) - reach), 0, n).astype(np.intp)
    r_hi = np.clip(np.ceil(np.maximum(ay, by) + reach) + 1, 0, n).astype(np.intp)
    runs = np.maximum(r_hi - r_lo, 0)
    R = int(runs.sum())
    if R == 0:
        e = np.zeros(0, np.intp)
        return e, e, e
    run_seg = np.repeat(np.arange(len(ax), dtype=np.intp), runs)
    y = r_lo[run_seg] + np.arange(R, dtype=np.intp) - np.repeat(np.cumsum(runs) - runs, runs)
    # unit direction (a degenerate segment points along x), its normal, and the row offset
    degenerate = ln < 1e-9
    ux = np.where(degenerate, 1.0, ex / np.where(degenerate, 1.0, ln))[run_seg]
    uy = np.where(degenerate, 0.0, ey / np.where(degenerate, 1.0, ln))[run_seg]
    rr, L = reach[run_seg], ln[run_seg]
    dy = y - ay[run_seg]
    lo = np.full(R, -np.inf)
    hi = np.full(R, np.inf)
    # across: |uy*dx - ux*dy| <= reach;  along: -reach <= ux*dx + uy*dy <= len + reach
    for c, base, off_lo, off_hi in ((uy, -ux * dy, -rr, rr), (ux, uy * dy, -rr, L + rr)):
        flat = np.abs(c) < 1e-9
        c_safe = np.where(flat, 1.0, c)
        x1 = (off_lo - base) / c_safe
        x2 = (off_hi - base) / c_safe
        inside = (base >= off_lo) & (base <= off_hi)
        lo = np.maximum(lo, np.where(flat, np.where(inside, -np.inf, np.inf), np.minimum(x1, x2)))
        hi = np.minimum(hi, np.where(flat, np.where(inside, np.inf, -np.inf), np.maximum(x1, x2)))
    sa = ax[run_seg]
    c_lo = np.clip(np.ceil(sa + lo), 0, n).astype(np.intp)
    c_hi = np.clip(np.floor(sa + hi) + 1, 0, n).astype(np.intp)
    w = np.maximum(c_hi - c_lo, 0)
    N = int(w.sum())
    start = np.cumsum(w) - w
    seg = np.repeat(run_seg, w)
    rows = np.repeat(y, w)
    cols = np.arange(N, dtype=np.intp) + np.repeat(c_lo - start, w)
    return seg, rows, cols


class Projector:
    """Evaluates regions and tube sets for one :class:`ViewGeometry`."""

    def __init__(self, geom: ViewGeometry):
        self.geom = geom
        self.c = geom.centres
        self.n = geom.size
        self._views: dict[tuple[int, float], tuple] = {}
        self._intervals: dict[int, tuple] = {}
        self._mags: dict[bytes, float] = {}

    # ------------------------------------------------------------------ regions
    def _view(self, shape, ref: np.ndarray):
        point = shape.ref_point if shape.ref_point is not None else ref
        # most lookups are cache hits: key the magnification on the point's bytes
        pk = np.asarray(point, float).tobytes()
        M = self._mags.get(pk)
        if M is None:
            M = self._mags[pk] = float(self.geom.magnification(point)[0])
        key = (id(shape), M)
        hit = self._views.get(key)
        if hit is None or hit[0] is not shape:
            # the entry keeps its shape alive, so an id is never reused while cached
            hit = self._views[key] = (shape, shape.to_view(self.geom.view_map(M)))
        return hit[1]

    def _rect(self, box) -> tuple[int, int, int, int] | None:
        u0, u1, v0, v1 = box
        px, half = self.geom.pixel_mm, self.n / 2
        j0 = max(int(np.floor(u0 / px + half - 0.5)), 0)
        j1 = min(int(np.ceil(u1 / px + half - 0.5)) + 1, self.n)
        i0 = max(int(np.floor(v0 / px + half - 0.5)), 0)
        i1 = min(int(np.ceil(v1 / px + half - 0.5)) + 1, self.n)
        if j0 >= j1 or i0 >= i1:
            return None
        return i0, i1, j0, j1

    def _interval(self, shape, ref: np.ndarray):
        """(rect, w0, w1) of a bounded shape over its whole footprint, computed once per view:
        regions that share a shape (a lung and every finding inside it) slice it."""
        view = self._view(shape, ref)
        key = id(view)
        got = self._intervals.get(key)
        if got is None:
            rect = self._rect(view.box)
            got = (rect, None, None)
            if rect is not None:
                i0, i1, j0, j1 = rect
                w0, w1 = view.interval(self.c[j0:j1], self.c[i0:i1])
                got = (rect, w0, w1)
            self._intervals[key] = got
        return got

    def chord_rect(self, region: Region):
        """(rect, chord) with ``rect = (i0, i1, j0, j1)``: path length (mm) inside the region."""
        ref = region.ref_point
        bounded = [m for m in region.members if not isinstance(m, HalfSpace)]
        got = [self._interval(m, ref) for m in bounded]
        if any(g[0] is None for g in got):
            return None
        i0, i1, j0, j1 = got[0][0]
        for (a0, a1, b0, b1), _, _ in got[1:]:
            i0, i1, j0, j1 = max(i0, a0), min(i1, a1), max(j0, b0), min(j1, b1)
        if i0 >= i1 or j0 >= j1:
            return None
        rect = (i0, i1, j0, j1)
        w0 = w1 = None
        for (a0, _, b0, _), s0, s1 in got:
            s0 = s0[i0 - a0:i1 - a0, j0 - b0:j1 - b0]
            s1 = s1[i0 - a0:i1 - a0, j0 - b0:j1 - b0]
            w0 = s0 if w0 is None else np.maximum(w0, s0)
            w1 = s1 if w1 is None else np.minimum(w1, s1)
        for m in region.members:
            if isinstance(m, HalfSpace):
                h0, h1 = self._view(m, ref).interval(self.c[j0:j1], self.c[i0:i1])
                w0, w1 = np.maximum(w0, h0), np.minimum(w1, h1)
        base = np.maximum(w1 - w0, 0.0)
        if not region.cutters or not base.any():
            return rect, base
        # Each cutter's interval, clipped to the region's own, on the overlap of the rectangles.
        # Most rays meet at most one cutter (its length is the cut); rays meeting several get
        # the exact union of their intervals.
        top = np.maximum(w0, w1)
        cut = np.zeros_like(base)
        hits = np.zeros(base.shape, np.int16)
        clipped = []
        for c in region.cutters:
            crect, cs, ce = self._interval(c, ref)
            if crect is None:
                continue
            a0, a1, b0, b1 = max(crect[0], i0), min(crect[1], i1), max(crect[2], j0), min(crect[3], j1)
            if a0 >= a1 or b0 >= b1:
                continue
            src = (slice(a0 - crect[0], a1 - crect[0]), slice(b0 - crect[2], b1 - crect[2]))
            sl = (slice(a0 - i0, a1 - i0), slice(b0 - j0, b1 - j0))
            lo, hi = w0[sl], top[sl]
            cs = np.minimum(np.maximum(cs[src], lo), hi)
            ce = np.minimum(np.maximum(ce[src], lo), hi)
            length = ce - cs
            if not length.any():
                continue
            cut[sl] += length
            hits[sl] += length > 0
            clipped.append((sl, cs, ce))
        many = hits > 1
        if many.any():
            index = np.full(base.shape, -1, np.intp)
            count = int(many.sum())
            index[many] = np.arange(count)
            S = np.zeros((count, len(clipped)))
            E = np.zeros((count, len(clipped)))
            for q, (sl, cs, ce) in enumerate(clipped):
                sub = index[sl]
                sel = sub >= 0
                S[sub[sel], q] = cs[sel]
                E[sub[sel], q] = ce[sel]
            cut[many] = union_length(S, E)
        return rect, np.maximum(base - cut, 0.0)

    def chord(self, region: Region) -> np.ndarray:
        """Full-image path length (mm) inside ``region``."""
        out = np.zeros((self.n, self.n))
        got = self.chord_rect(region)
        if got is not None:
            (i0, i1, j0, j1), ch = got
            out[i0:i1, j0:j1] = ch
        return out

    # ------------------------------------------------------------------ tubes
    def tubes(self, sets: Sequence[TubeSet], masks_for: set[str] | frozenset = frozenset()):
        """Sum of the tube sets' line integrals (attenuation x length), and coverage per tag."""
        image = np.zeros((self.n, self.n))
        cover: dict[str, np.ndarray] = {}
        sets = [s for s in sets if len(s) and self.geom.name in s.views]
        if not sets:
            return image, cover
        g, px, n = self.geom, self.geom.pixel_mm, self.n
        f32 = np.float32
        sid = np.concatenate([np.full(len(s), k, np.intp) for k, s in enumerate(sets)])
        cat = lambda name: np.concatenate([getattr(s, name) for s in sets])  # noqa: E731
        P0, P1 = cat("p0"), cat("p1")
        q0, q1 = g.local(P0), g.local(P1)
        M0, M1 = g.magnification(P0), g.magnification(P1)
        # Projected end points in continuous pixel coordinates (column, row).
        ax = (q0[:, 0] * M0 / px + n / 2 - 0.5)
        ay = (q0[:, 1] * M0 / px + n / 2 - 0.5)
        bx = (q1[:, 0] * M1 / px + n / 2 - 0.5)
        by = (q1[:, 1] * M1 / px + n / 2 - 0.5)
        dq = q1 - q0
        length3 = np.linalg.norm(dq, axis=1)
        sin = np.where(length3 > 1e-9, np.hypot(dq[:, 0], dq[:, 1]) / np.maximum(length3, 1e-9), 1.0)
        min_sin = np.array([s.min_sin for s in sets])[sid]
        Mm = 0.5 * (M0 + M1)
        r0 = cat("r0") * Mm / px          # radii in pixels
        r1 = cat("r1") * Mm / px
        reach = np.maximum(r0, r1) + 0.75
        seg, rows, cols = _capsule_pixels(ax, ay, bx, by, reach, n)
        if not len(seg):
            return image, cover
        # Per-segment constants (float32), gathered once per candidate pixel.
        ex, ey = (bx - ax).astype(f32), (by - ay).astype(f32)
        inv = (1.0 / np.maximum(ex * ex + ey * ey, 1e-9)).astype(f32)
        px_ = cols.astype(f32)
        px_ -= np.take(ax.astype(f32), seg)
        py_ = rows.astype(f32)
        py_ -= np.take(ay.astype(f32), seg)
        exs, eys = np.take(ex, seg), np.take(ey, seg)
        t = px_ * exs
        t += py_ * eys
        t *= np.take(inv, seg)
        capless = ~np.array([s.caps for s in sets])[sid]
        if capless.any():
            inside = ~(np.take(capless, seg) & ((t < 0) | (t >= 1)))
        np.clip(t, 0.0, 1.0, out=t)
        px_ -= t * exs
        py_ -= t * eys
        d2 = px_ * px_
        d2 += py_ * py_
        if capless.any():
            # flat-ended segments (vertebral bodies): nothing beyond their ends
            seg, rows, cols, t, d2 = seg[inside], rows[inside], cols[inside], t[inside], d2[inside]
        k = np.take(sid, seg)
        r = np.take(r0.astype(f32), seg) + t * np.take((r1 - r0).astype(f32), seg)
        mu = np.array([s.mu for s in sets], f32)
        value = np.take(mu[sid], seg) * _tube_profile(d2, r)
        ratio = np.array([s.inner_ratio for s in sets], f32)
        if (ratio > 0).any():
            inner_mu = np.array([s.inner_mu for s in sets], f32)
            hollow = np.take(ratio[sid] > 0, seg)
            value[hollow] += (np.take(inner_mu[sid], seg[hollow])
                              * _tube_profile(d2[hollow], r[hollow] * np.take(ratio[sid], seg[hollow])))
        scale = (px / Mm / np.maximum(sin, min_sin)).astype(f32)   # pixel units -> mm, obliquity
        f0, f1 = cat("f0").astype(f32), cat("f1").astype(f32)
        if np.any(f0 != 1) or np.any(f1 != 1):
            value *= np.take(scale * f0, seg) + t * np.take(scale * (f1 - f0), seg)
        else:
            value *= np.take(scale, seg)
        # Max per (set, pixel): each set gets its own rectangle in one flat buffer.
        ns = len(sets)
        sign = np.where(mu < 0, -1.0, 1.0).astype(f32)
        r_lo = np.full(ns, n, np.intp)
        r_hi = np.zeros(ns, np.intp)
        c_lo = np.full(ns, n, np.intp)
        c_hi = np.zeros(ns, np.intp)
        np.minimum.at(r_lo, sid, np.clip(np.floor(np.minimum(ay, by) - reach), 0, n).astype(np.intp))
        np.maximum.at(r_hi, sid, np.clip(np.ceil(np.maximum(ay, by) + reach) + 1, 0, n).astype(np.intp))
        np.minimum.at(c_lo, sid, np.clip(np.floor(np.minimum(ax, bx) - reach), 0, n).astype(np.intp))
        np.maximum.at(c_hi, sid, np.clip(np.ceil(np.maximum(ax, bx) + reach) + 1, 0, n).astype(np.intp))
        h_s = np.maximum(r_hi - r_lo, 0)
        w_s = np.maximum(c_hi - c_lo, 0)
        offset = np.concatenate([[0], np.cumsum(h_s * w_s)[:-1]])
        size = int((h_s * w_s).sum())
        idx = offset[k] + (rows - r_lo[k]) * w_s[k] + (cols - c_lo[k])
        # Inside a set each pixel takes the value of its nearest segment (distance to the
        # polyline), so joints neither double up nor show the cortex of a neighbour's cap.
        nearest = np.full(size, np.inf, f32)
        np.minimum.at(nearest, idx, d2)
        sel = d2 <= nearest[idx]
        buf = np.zeros(size, f32)
        np.maximum.at(buf, idx[sel], (value * sign[k])[sel])
        for j, s in enumerate(sets):
            if h_s[j] == 0:
                continue
            block = buf[offset[j]:offset[j] + h_s[j] * w_s[j]].reshape(h_s[j], w_s[j])
            image[r_lo[j]:r_hi[j], c_lo[j]:c_hi[j]] += sign[j] * block
            if s.tag is not None and s.tag in masks_for:
                m = cover.setdefault(s.tag, np.zeros((n, n), bool))
                m[r_lo[j]:r_hi[j], c_lo[j]:c_hi[j]] |= block > 1e-4
        return image, cover
