"""Shapes of the 3D thorax and the exact length of a ray inside each.

Patient frame (mm): ``x`` towards the patient's left, ``y`` anterior, ``z`` superior.
A *view frame* ``(u, v, w)`` is where a projection happens: ``u`` to the image's right, ``v``
downwards on the image, ``w`` along the ray. Every shape maps into a view frame by an affine map
whose ``(u, w)`` rows depend on ``(x, y)`` only and whose ``v`` row depends on ``z`` only (the
beam is horizontal), and answers, for the rays through a grid of pixel centres, the interval
``[w0, w1]`` of each ray inside it. Shapes are convex along every horizontal ray, so that
interval is all there is; a :class:`Region` combines them (intersection minus a union of
cutters) with exact 1D interval arithmetic, which is how the heart indents a lung or a
hemidiaphragm shapes its base.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

BIG = 1.0e6  # "infinite" ray parameter for half-spaces (mm)


@dataclasses.dataclass(frozen=True, eq=False)
class ViewMap:
    """Affine map patient -> view frame: ``p_view = A @ (p - origin)``.

    ``A`` = diag(M, M, 1) @ P @ R: rotation about z, axis permutation, in-plane magnification.
    """

    A: np.ndarray
    origin: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "A_inv", np.linalg.inv(self.A))

    def apply(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - self.origin) @ self.A.T


def _bbox_of_quadric(Qinv: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.diag(Qinv), 0.0))


# --------------------------------------------------------------------------------- ellipsoid
@dataclasses.dataclass(frozen=True, eq=False)
class Ellipsoid:
    """``(p - c)^T Q (p - c) <= 1``; build with :meth:`from_axes`."""

    center: np.ndarray
    Q: np.ndarray

    @staticmethod
    def from_axes(center: Sequence[float], semi_axes: Sequence[float],
                  rotation: np.ndarray | None = None) -> "Ellipsoid":
        """Semi-axes along the columns of ``rotation`` (identity: along x, y, z)."""
        R = np.eye(3) if rotation is None else np.asarray(rotation, float)
        d = np.diag(1.0 / np.square(np.asarray(semi_axes, float)))
        return Ellipsoid(np.asarray(center, float), R @ d @ R.T)

    def contains(self, pts: np.ndarray) -> np.ndarray:
        q = np.atleast_2d(pts) - self.center
        return ((q @ self.Q) * q).sum(axis=1) <= 1.0

    def scaled(self, about: np.ndarray, s: np.ndarray) -> "Ellipsoid":
        s = np.asarray(s, float)
        Si = np.diag(1.0 / s)
        return Ellipsoid(about + s * (self.center - about), Si @ self.Q @ Si)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        b = self.__dict__.get("_bounds")
        if b is None:
            h = _bbox_of_quadric(np.linalg.inv(self.Q))
            b = (self.center - h, self.center + h)
            object.__setattr__(self, "_bounds", b)
        return b

    @property
    def ref_point(self) -> np.ndarray:
        return self.center

    def to_view(self, vm: ViewMap) -> "_ViewEllipsoid":
        Ai = vm.A_inv
        return _ViewEllipsoid(vm.apply(self.center), Ai.T @ self.Q @ Ai)


class _ViewEllipsoid:
    bounded = True

    def __init__(self, c: np.ndarray, Q: np.ndarray):
        self.c, self.Q = c, Q
        h = _bbox_of_quadric(np.linalg.inv(Q))
        self.box = (c[0] - h[0], c[0] + h[0], c[1] - h[1], c[1] + h[1])

    def interval(self, u: np.ndarray, v: np.ndarray):
        Q, c = self.Q, self.c
        du = u[None, :] - c[0]
        dv = v[:, None] - c[1]
        beta = Q[0, 2] * du + Q[1, 2] * dv
        gamma = Q[0, 0] * du * du + 2.0 * Q[0, 1] * du * dv + Q[1, 1] * dv * dv - 1.0
        disc = beta * beta - Q[2, 2] * gamma
        root = np.sqrt(np.maximum(disc, 0.0))
        inside = disc > 0
        w0 = np.where(inside, c[2] + (-beta - root) / Q[2, 2], 0.0)
        w1 = np.where(inside, c[2] + (-beta + root) / Q[2, 2], 0.0)
        return w0, w1


# --------------------------------------------------------------------------------- loft
@dataclasses.dataclass(frozen=True, eq=False)
class Loft:
    """A body whose horizontal sections are axis-aligned ellipses varying smoothly with z.

    Knots ``z`` (increasing) with section centre ``(cx, cy)`` and semi-axes ``(a, b)``; between
    knots the section follows a monotone cubic (PCHIP), so outlines have no corners. Outside
    ``[z[0], z[-1]]`` the loft is empty (flat ends).
    """

    z: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    table: tuple = dataclasses.field(default=None, compare=False, repr=False)

    @staticmethod
    def build(z, cx, cy, a, b, step: float = 2.0) -> "Loft":
        z = np.asarray(z, float)
        if z.ndim != 1 or z.size < 2 or np.any(np.diff(z) <= 0):
            raise ValueError(f"Loft: z knots must be strictly increasing, got {z}")
        arrs = [np.broadcast_to(np.asarray(x, float), z.shape).copy() for x in (cx, cy, a, b)]
        if np.any(arrs[2] < 0) or np.any(arrs[3] < 0):
            raise ValueError("Loft: semi-axes must be non-negative")
        loft = Loft(z, *arrs, table=_loft_table(z, arrs, step))
        zt, tcx, tcy, ta, tb = loft.table
        lo = np.array([np.min(tcx - ta), np.min(tcy - tb), z[0]])
        hi = np.array([np.max(tcx + ta), np.max(tcy + tb), z[-1]])
        object.__setattr__(loft, "_bounds", (lo, hi))
        object.__setattr__(loft, "_grid", np.stack([tcx, tcy, ta, tb], axis=-1))
        return loft

    def section(self, z: np.ndarray):
        """(cx, cy, a, b) at heights ``z`` (a = b = 0 outside the loft)."""
        zt = self.table[0]
        z = np.asarray(z, float)
        # the table is uniform in z: linear interpolation by direct indexing
        pos = np.clip((z - zt[0]) / (zt[1] - zt[0]), 0.0, len(zt) - 1.000001)
        k = pos.astype(np.intp)
        f = pos - k
        grid = self._grid
        lo, hi = grid[k], grid[k + 1]
        out = lo + (hi - lo) * f[..., None]
        outside = (z < self.z[0]) | (z > self.z[-1])
        out[outside, 2:] = 0.0
        return out[..., 0], out[..., 1], out[..., 2], out[..., 3]

    def contains(self, pts: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(pts)
        cx, cy, a, b = self.section(p[:, 2])
        ok = (a > 0) & (b > 0)
        a = np.where(ok, a, 1.0)
        b = np.where(ok, b, 1.0)
        return ok & (((p[:, 0] - cx) / a) ** 2 + ((p[:, 1] - cy) / b) ** 2 <= 1.0)

    def scaled(self, about: np.ndarray, s: np.ndarray) -> "Loft":
        s = np.asarray(s, float)
        return Loft.build(about[2] + s[2] * (self.z - about[2]), about[0] + s[0] * (self.cx - about[0]),
                          about[1] + s[1] * (self.cy - about[1]), self.a * s[0], self.b * s[1])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self._bounds

    @property
    def ref_point(self) -> np.ndarray:
        lo, hi = self._bounds
        return (lo + hi) / 2

    def to_view(self, vm: ViewMap) -> "_ViewLoft":
        return _ViewLoft(self, vm)


def _pchip(x: np.ndarray, y: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Monotone piecewise-cubic (Fritsch-Carlson) interpolation of the columns of ``y``
    (shape (n, k)) at ``xi``: smooth, and never overshooting the knots."""
    h = np.diff(x)[:, None]
    delta = np.diff(y, axis=0) / h
    m = np.zeros_like(y)
    if len(x) > 2:
        w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
        same = delta[:-1] * delta[1:] > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            hm = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
        m[1:-1] = np.where(same, hm, 0.0)
    m[0], m[-1] = delta[0], delta[-1]
    k = np.clip(np.searchsorted(x, xi, side="right") - 1, 0, len(h) - 1)
    t = ((xi - x[k]) / h[k, 0])[:, None]
    hk = h[k]
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1) * y[k] + (t3 - 2 * t2 + t) * hk * m[k]
            + (-2 * t3 + 3 * t2) * y[k + 1] + (t3 - t2) * hk * m[k + 1])


def _loft_table(z, arrs, step):
    n = max(2, int(np.ceil((z[-1] - z[0]) / step)) + 1)
    zt = np.linspace(z[0], z[-1], n)
    cols = _pchip(z, np.stack(arrs, axis=1), zt)
    return (zt, *(cols[:, i] for i in range(cols.shape[1])))


class _ViewLoft:
    bounded = True

    def __init__(self, loft: Loft, vm: ViewMap):
        A = vm.A
        self.loft, self.o = loft, vm.origin
        # (u, w) from (x, y): 2x2 block; v from z: scalar.
        self.B = A[np.ix_([0, 2], [0, 1])]
        self.Bi = np.linalg.inv(self.B)
        self.vz = A[1, 2]
        zt, cx, cy, a, b = loft.table
        # u half-width of each tabulated section: sqrt of (B diag(a^2, b^2) B^T)_uu.
        cu = self.B[0, 0] * (cx - self.o[0]) + self.B[0, 1] * (cy - self.o[1])
        hu = np.sqrt(self.B[0, 0] ** 2 * a * a + self.B[0, 1] ** 2 * b * b)
        vz = self.vz * (zt - self.o[2])
        self.box = (float(np.min(cu - hu)), float(np.max(cu + hu)), float(np.min(vz)), float(np.max(vz)))

    def interval(self, u: np.ndarray, v: np.ndarray):
        z = self.o[2] + v / self.vz
        cx, cy, a, b = self.loft.section(z)
        ok = (a > 0) & (b > 0)
        a = np.where(ok, a, 1.0)
        b = np.where(ok, b, 1.0)
        B, Bi = self.B, self.Bi
        # Section quadric in (x, y): diag(1/a^2, 1/b^2); in (u, w): Bi^T diag Bi.
        ia, ib = 1.0 / (a * a), 1.0 / (b * b)
        quu = Bi[0, 0] ** 2 * ia + Bi[1, 0] ** 2 * ib
        quw = Bi[0, 0] * Bi[0, 1] * ia + Bi[1, 0] * Bi[1, 1] * ib
        qww = Bi[0, 1] ** 2 * ia + Bi[1, 1] ** 2 * ib
        cu = B[0, 0] * (cx - self.o[0]) + B[0, 1] * (cy - self.o[1])
        cw = B[1, 0] * (cx - self.o[0]) + B[1, 1] * (cy - self.o[1])
        col = lambda x: x[:, None]  # noqa: E731  (per-row parameters)
        du = u[None, :] - col(cu)
        beta = col(quw) * du
        gamma = col(quu) * du * du - 1.0
        disc = beta * beta - col(qww) * gamma
        inside = (disc > 0) & col(ok)
        root = np.sqrt(np.maximum(disc, 0.0))
        w0 = np.where(inside, col(cw) + (-beta - root) / col(qww), 0.0)
        w1 = np.where(inside, col(cw) + (-beta + root) / col(qww), 0.0)
        return w0, w1


# --------------------------------------------------------------------------------- half-space
@dataclasses.dataclass(frozen=True, eq=False)
class HalfSpace:
    """``n . p <= d``: fissures, fluid levels, cut planes. Unbounded: only inside a Region."""

    n: np.ndarray
    d: float

    @staticmethod
    def through(point: Sequence[float], normal_out: Sequence[float]) -> "HalfSpace":
        """The side of the plane through ``point`` opposite to ``normal_out``."""
        n = np.asarray(normal_out, float)
        n = n / np.linalg.norm(n)
        return HalfSpace(n, float(n @ np.asarray(point, float)))

    def contains(self, pts: np.ndarray) -> np.ndarray:
        return np.atleast_2d(pts) @ self.n <= self.d

    def scaled(self, about: np.ndarray, s: np.ndarray) -> "HalfSpace":
        n2 = self.n / np.asarray(s, float)
        return HalfSpace(n2, float(self.d - self.n @ about + n2 @ about))

    def bounds(self):
        return np.full(3, -BIG), np.full(3, BIG)

    ref_point = None

    def to_view(self, vm: ViewMap) -> "_ViewHalfSpace":
        nv = vm.A_inv.T @ self.n
        return _ViewHalfSpace(nv, self.d - self.n @ vm.origin)


class _ViewHalfSpace:
    bounded = False
    box = (-BIG, BIG, -BIG, BIG)

    def __init__(self, n, d):
        self.n, self.d = n, d

    def interval(self, u, v):
        r = self.d - self.n[0] * u[None, :] - self.n[1] * v[:, None]
        nw = self.n[2]
        shape = np.broadcast_shapes(r.shape)
        if abs(nw) < 1e-12:
            full = r >= 0
            return np.where(full, -BIG, 0.0), np.where(full, BIG, 0.0)
        t = r / nw
        if nw > 0:
            return np.full(shape, -BIG), np.minimum(t, BIG)
        return np.maximum(t, -BIG), np.full(shape, BIG)


Shape = Ellipsoid | Loft | HalfSpace


# --------------------------------------------------------------------------------- region
@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """Points inside every ``member`` and inside no ``cutter``."""

    members: tuple
    cutters: tuple = ()

    def __post_init__(self):
        if not any(not isinstance(m, HalfSpace) for m in self.members):
            raise ValueError("Region: needs at least one bounded member")

    def contains(self, pts: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(np.asarray(pts, float))
        ok = np.ones(len(p), bool)
        for m in self.members:
            ok &= m.contains(p)
        if not ok.any():
            return ok
        lo, hi = p[ok].min(axis=0), p[ok].max(axis=0)
        for c in self.cutters:
            clo, chi = c.bounds()
            if np.all(clo <= hi) and np.all(chi >= lo):
                ok &= ~c.contains(p)
        return ok

    def scaled(self, about, s) -> "Region":
        about = np.asarray(about, float)
        return Region(tuple(m.scaled(about, s) for m in self.members),
                      tuple(c.scaled(about, s) for c in self.cutters))

    @property
    def ref_point(self) -> np.ndarray:
        return next(m.ref_point for m in self.members if m.ref_point is not None)

    def bounds(self):
        lo, hi = np.full(3, -BIG), np.full(3, BIG)
        for m in self.members:
            a, b = m.bounds()
            lo, hi = np.maximum(lo, a), np.minimum(hi, b)
        return lo, hi


def union_length(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Measure of the union of k intervals per ray; arrays (..., k); empty ones have start == end.

    With starts and ends sorted independently, the uncovered gaps inside [min start, max end]
    are exactly the positive ``s_(i+1) - e_(i)``; zero-length intervals change nothing.
    """
    if starts.shape[-1] == 1:
        return np.maximum(ends[..., 0] - starts[..., 0], 0.0)
    s = np.sort(starts, axis=-1)
    e = np.sort(ends, axis=-1)
    gaps = np.maximum(s[..., 1:] - e[..., :-1], 0.0).sum(axis=-1)
    return np.maximum(e[..., -1] - s[..., 0] - gaps, 0.0)
