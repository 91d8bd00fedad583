"""Deterministic random fields that are pure functions of (seed, position, day).

Two kinds, both defined everywhere on Earth so any bounding box works and a place gets the same
value whatever region or window is generated:
- lattice value noise: values hashed from integer lattice coordinates, smoothly interpolated;
  the regular-grid path interpolates separably (rows, then columns), which keeps 25-million-
  pixel rasters cheap, and agrees with the scattered-point path;
- Gaussian random fields by random Fourier features on the unit sphere (stationary, unit
  variance, Gaussian covariance with a chosen length), and AR(1)-in-days versions of them built
  as a truncated moving sum, so day d never depends on when the window starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_KM = 6371.0
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def stream_key(seed: int, *names: object) -> int:
    """A 64-bit key for one named random stream of one seed (stable across runs/platforms)."""
    text = "/".join([str(int(seed))] + [str(n) for n in names])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stream_rng(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(stream_key(seed, *names))


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: consecutive lattice indices give unrelated values.
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(key: int, *coords: np.ndarray | int) -> np.ndarray:
    """Uniform [0, 1) values, one per element of the broadcast integer coordinates."""
    with np.errstate(over="ignore"):
        h = np.asarray(np.uint64(key & 0xFFFFFFFFFFFFFFFF))
        for c in coords:
            h = _mix(h ^ (np.asarray(c, dtype=np.int64).view(np.uint64) + _GOLDEN))
        # NumPy gives a scalar for scalar coordinates: an array (0-d) whatever they are.
        return np.asarray((h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53))


def hash_uniform_scalar(key: int, *coords: int) -> float:
    """hash_uniform's one value at integer coordinates."""
    return float(hash_uniform(key, *coords))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _axis(coord: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(coord, dtype=np.float64) / spacing
    i0 = np.floor(f).astype(np.int64)
    return i0, _smooth(f - i0).astype(np.float32)


def value_noise_grid(lats: np.ndarray, lons: np.ndarray, spacing: float, key: int) -> np.ndarray:
    """Value noise in [-1, 1] on the grid lats x lons (float32, shape (lats, lons))."""
    iy, ty = _axis(lats, spacing)
    ix, tx = _axis(lons, spacing)
    ys = np.arange(iy.min(), iy.max() + 2)
    xs = np.arange(ix.min(), ix.max() + 2)
    lattice = (hash_uniform(key, ys[:, None], xs[None, :]) * 2.0 - 1.0).astype(np.float32)
    jx = ix - xs[0]
    rows = lattice[:, jx] * (1.0 - tx) + lattice[:, jx + 1] * tx
    jy = iy - ys[0]
    return rows[jy] * (1.0 - ty)[:, None] + rows[jy + 1] * ty[:, None]


def value_noise_points(lat: np.ndarray, lon: np.ndarray, spacing: float, key: int) -> np.ndarray:
    """The same noise at scattered points (any matching shapes)."""
    iy, ty = _axis(lat, spacing)
    ix, tx = _axis(lon, spacing)

    def v(dy: int, dx: int) -> np.ndarray:
        return hash_uniform(key, iy + dy, ix + dx) * 2.0 - 1.0

    top = v(0, 0) * (1 - tx) + v(0, 1) * tx
    bottom = v(1, 0) * (1 - tx) + v(1, 1) * tx
    return (top * (1 - ty) + bottom * ty).astype(np.float32)


@dataclass(frozen=True)
class Sampler:
    """Where a field is evaluated: a regular grid (1-D lats x 1-D lons) or scattered points.

    `lat`/`lon` broadcast to the output shape, so analytic terms are written once for both."""

    lats: np.ndarray
    lons: np.ndarray
    grid: bool
    resolution: float = 0.0  # degrees; octaves finer than this are left out (anti-aliasing)

    @classmethod
    def on_grid(cls, lats: np.ndarray, lons: np.ndarray) -> "Sampler":
        res = float(np.median(np.abs(np.diff(lats)))) if len(lats) > 1 else 0.0
        return cls(np.asarray(lats, np.float64), np.asarray(lons, np.float64), True, res)

    @classmethod
    def at_points(cls, lat: np.ndarray, lon: np.ndarray) -> "Sampler":
        return cls(np.asarray(lat, np.float64), np.asarray(lon, np.float64), False, 0.0)

    @property
    def lat(self) -> np.ndarray:
        return self.lats[:, None] if self.grid else self.lats

    @property
    def lon(self) -> np.ndarray:
        return self.lons[None, :] if self.grid else self.lons

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.lats), len(self.lons)) if self.grid else np.shape(self.lats)

    def noise(self, spacing: float, key: int) -> np.ndarray:
        if self.grid:
            return value_noise_grid(self.lats, self.lons, spacing, key)
        return value_noise_points(self.lats, self.lons, spacing, key)

    def fractal(self, coarsest: float, finest: float, gain: float, key: int) -> np.ndarray:
        """Weighted mean of value-noise octaves from `coarsest` down to `finest`, halving the
        spacing and multiplying the weight by `gain` each octave. Octaves finer than the
        sampler's resolution are left out (their mean over a pixel is about zero), without
        renormalising, so coarse and fine rasters of one field agree."""
        total = np.zeros(self.shape, np.float32)
        norm = 0.0
        spacing, amp, octave = coarsest, 1.0, 0
        while spacing >= finest * 0.999:
            if spacing >= self.resolution * 0.999:
                total += np.float32(amp) * self.noise(spacing, key + octave)
            norm += amp
            spacing /= 2.0
            amp *= gain
            octave += 1
        return total / np.float32(norm)


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """(..., 3) positions on the unit sphere."""
    la = np.radians(lat)
    lo = np.radians(lon)
    return np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], axis=-1)


class SphereField:
    """A stationary unit-variance Gaussian random field on the sphere with covariance
    exp(-d^2 / (2 L^2)), by random Fourier features of 3-D positions (d: chord length)."""

    def __init__(self, key: int, length_km: float, n_features: int = 96) -> None:
        rng = np.random.default_rng(key)
        scale = EARTH_RADIUS_KM / length_km
        self.omega = rng.normal(0.0, scale, size=(3, n_features))
        self.phase = rng.uniform(0.0, 2 * np.pi, size=n_features)
        self.amp = np.sqrt(2.0 / n_features)

    def at(self, xyz: np.ndarray) -> np.ndarray:
        flat = xyz.reshape(-1, 3)
        out = np.empty(flat.shape[0], np.float64)
        for start in range(0, flat.shape[0], 65536):  # bounded memory for big point sets
            part = flat[start:start + 65536]
            # Three explicit products: a BLAS call with an inner size of 3 is mostly overhead.
            chunk = (part[:, 0:1] * self.omega[0] + part[:, 1:2] * self.omega[1]
                     + part[:, 2:3] * self.omega[2] + self.phase)
            out[start:start + 65536] = self.amp * np.cos(chunk).sum(axis=1)
        return out.reshape(xyz.shape[:-1])


class DailyField:
    """AR(1)-in-days Gaussian random fields: X_d = sqrt(1-phi^2) sum_k phi^k F_{d-k}, with
    independent daily innovations F (SphereField keyed by the day), truncated where phi^k is
    negligible and renormalised to unit variance."""

    def __init__(self, seed: int, name: str, length_km: float, phi: float,
                 n_features: int = 96) -> None:
        self.seed, self.name, self.length_km, self.phi = seed, name, length_km, phi
        self.n_features = n_features
        self.memory = max(1, int(np.ceil(np.log(1e-2) / np.log(phi)))) if phi > 0 else 1
        weights = np.sqrt(1 - phi**2) * phi ** np.arange(self.memory) if phi > 0 else np.ones(1)
        self.weights = weights / np.sqrt((weights**2).sum())

    def innovation(self, day_ordinal: int) -> SphereField:
        key = stream_key(self.seed, self.name, day_ordinal)
        return SphereField(key, self.length_km, self.n_features)

    def on_days(self, first_ordinal: int, n_days: int, xyz: np.ndarray) -> np.ndarray:
        """(n_days, *positions) values for consecutive days starting at `first_ordinal`."""
        start = first_ordinal - (self.memory - 1)
        innovations = np.stack([self.innovation(o).at(xyz)
                                for o in range(start, first_ordinal + n_days)])
        out = np.zeros((n_days,) + xyz.shape[:-1], np.float64)
        for k, w in enumerate(self.weights):
            idx = self.memory - 1 - k
            out += w * innovations[idx: idx + n_days]
        return out
