"""Deterministic synthetic CT series for benchmarks and tests.

``generate_ct_series`` writes one axial CT series (thorax down to the upper pelvis) as
DICOM Part 10 files.  The images are meant to behave like a real scanner's output for
anything a PACS does with them: realistic header (one patient/study/series, consistent
geometry, window presets, UTF-8 character set) and pixel data with the statistics of a
body CT (mostly air and soft tissue, sharp bone edges, correlated noise), so compression
ratios, thumbnails and window/level rendering are representative.  Random noise would
compress and render nothing like a patient.

Everything is derived from ``seed``: the same arguments always give byte-identical files,
so benchmark runs are comparable and tests can rely on fixed UIDs.

Conventions used below: patient coordinates in millimetres (DICOM LPS), ``x`` grows
towards the patient's left (image right), ``y`` towards the posterior (image down), and
``t`` in [0, 1] is the normalised craniocaudal position (0 = upper thorax, 1 = upper
pelvis).  Anatomy is specified as a function of ``t`` so that any number of slices
covers the same body; the slice spacing is adapted instead (1.0 mm for 300 slices).

CLI::

    python benchmarks/phantom.py OUTDIR [--slices N] [--rows R] [--columns C] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["CTPhantom", "generate_ct_series", "hu_to_uint8", "main"]

# Field of view and craniocaudal coverage of the default 300 x 512 x 512 series
# (0.7 mm pixels, 1 mm slices).  Other sizes keep the same body in view by scaling the
# pixel and slice spacing, so a tiny 64 x 64 test series still shows a whole body.
_FOV_MM = 512 * 0.7
_COVERAGE_MM = 300.0
_SLICE_THICKNESS_MM = 1.0

# Stored values are HU - intercept; BitsStored 12 signed gives stored values -2048..2047,
# i.e. HU -1024..1023 once the scanner-style -1024 intercept is applied.
_INTERCEPT = -1024.0
_HU_MIN, _HU_MAX = -1024.0, 1023.0

_NOISE_SIGMA_HU = 9.0

# Attenuation values (HU) of the tissues drawn.
AIR, LUNG, FAT, SOFT, MUSCLE, FLUID = -1000.0, -860.0, -100.0, 40.0, 55.0, 10.0
LIVER, SPLEEN, PANCREAS, KIDNEY = 105.0, 115.0, 95.0, 185.0
ARTERY, VEIN, HEART_BLOOD, ORAL_CONTRAST = 300.0, 170.0, 240.0, 260.0
CORTICAL_BONE, CANCELLOUS_BONE, DISC = 950.0, 300.0, 90.0


def _cap(t: float, start: float, end: float) -> float:
    """Cross-section scale of an ellipsoidal organ spanning ``[start, end]`` along t.

    An ellipsoid's section radius follows sqrt(1 - u^2), which gives organs rounded
    poles instead of cylinders that appear and vanish abruptly.
    """
    if not start < t < end:
        return 0.0
    u = (2.0 * t - start - end) / (end - start)
    return math.sqrt(1.0 - u * u)


def _smoothstep(t: float, start: float, end: float) -> float:
    """0 before ``start``, 1 after ``end``, smooth (C1) in between."""
    s = min(max((t - start) / (end - start), 0.0), 1.0)
    return s * s * (3.0 - 2.0 * s)


def _lerp(a: float, b: float, s: float) -> float:
    return a + (b - a) * s


def _box3(img: np.ndarray) -> np.ndarray:
    """3x3 box blur (separable, edge-replicated).

    Applied to the whole slice it mimics the partial-volume softening of a
    reconstruction kernel and turns white noise into the fine-grained, spatially
    correlated texture of CT noise.
    """
    # In-place shifted sums: cheaper than np.pad plus nine full-size temporaries.
    h = img.copy()
    h[:, 1:] += img[:, :-1]
    h[:, :-1] += img[:, 1:]
    h[:, 0] += img[:, 0]
    h[:, -1] += img[:, -1]
    v = h.copy()
    v[1:] += h[:-1]
    v[:-1] += h[1:]
    v[0] += h[0]
    v[-1] += h[-1]
    v *= np.float32(1.0 / 9.0)
    return v


@dataclass(frozen=True)
class _Track:
    """Tubular structures (lung vessels, bowel loops) that wander smoothly along z.

    Positions are stored in units of the enclosing region so they stay inside it while
    the region changes size; all arrays have one entry per track.
    """

    u0: np.ndarray
    v0: np.ndarray
    amp: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    radius: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    kind: np.ndarray

    def position(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        wobble = self.amp * np.sin(self.freq * t + self.phase)
        return self.u0 + wobble, self.v0 + 0.7 * wobble * np.cos(self.phase)

    def active(self, t: float) -> np.ndarray:
        return (self.t_start <= t) & (t <= self.t_end)


@dataclass(frozen=True)
class _Cavity:
    """Inner body cavity of one slice (rib cage / peritoneum): semi-axes, centre, mask."""

    a: float
    b: float
    cy: float
    mask: np.ndarray


class CTPhantom:
    """Analytic body phantom rendered slice by slice in Hounsfield units.

    The anatomy (organ layout, vessel and bowel tracks) is fixed by ``seed``; the
    noise of slice ``k`` comes from its own generator seeded with ``(seed, k)``, so any
    slice can be rendered alone and always gives the same pixels.
    """

    def __init__(self, slices: int = 300, rows: int = 512, columns: int = 512, seed: int = 0):
        if slices < 1 or rows < 8 or columns < 8:
            raise ValueError("need at least 1 slice of 8 x 8 pixels")
        self.slices, self.rows, self.columns, self.seed = slices, rows, columns, seed
        self.pixel_spacing = _FOV_MM / max(rows, columns)
        self.slice_spacing = _COVERAGE_MM / slices
        # Pixel-centre coordinates; the image is centred on the isocentre (0, 0).
        self.x = ((np.arange(columns) - (columns - 1) / 2) * self.pixel_spacing).astype(np.float32)
        self.y = ((np.arange(rows) - (rows - 1) / 2) * self.pixel_spacing).astype(np.float32)
        self._xx, self._yy = np.meshgrid(self.x, self.y)

        layout = np.random.default_rng([seed, 0])
        # Slight per-seed build differences so different seeds are different "patients".
        self._body_scale = float(layout.uniform(0.94, 1.04))
        self._lung_vessels = self._make_tracks(layout, 260, radius=(0.6, 2.6))
        self._bowel = self._make_tracks(layout, 22, radius=(9.0, 17.0), t_range=(0.66, 1.0))

    # -- geometry helpers -------------------------------------------------------------

    @staticmethod
    def _make_tracks(
        rng: np.random.Generator,
        n: int,
        radius: tuple[float, float],
        t_range: tuple[float, float] = (0.0, 1.0),
    ) -> _Track:
        # Uniform points in the unit disc (sqrt for uniform area density).
        r = np.sqrt(rng.uniform(0.0, 1.0, n)) * 0.92
        a = rng.uniform(0.0, 2 * np.pi, n)
        start = rng.uniform(t_range[0] - 0.15, t_range[1], n)
        return _Track(
            u0=r * np.cos(a),
            v0=r * np.sin(a),
            amp=rng.uniform(0.02, 0.10, n),
            freq=rng.uniform(4.0, 14.0, n),
            phase=rng.uniform(0.0, 2 * np.pi, n),
            radius=rng.uniform(*radius, n),
            t_start=start,
            t_end=start + rng.uniform(0.08, 0.35, n),
            kind=rng.integers(0, 3, n),
        )

    def _ellipse(
        self, cx: float, cy: float, a: float, b: float, angle: float = 0.0
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        """Mask of an ellipse restricted to its bounding box.

        Returns the (rows, columns) slices of the box and the boolean mask inside it:
        evaluating only the box keeps small structures cheap, which is what makes a
        300-slice series render in a few seconds.  ``angle`` is in degrees.
        """
        reach = max(a, b)
        ps = self.pixel_spacing
        c0 = max(int((cx - reach - self.x[0]) / ps), 0)
        c1 = min(int((cx + reach - self.x[0]) / ps) + 2, self.columns)
        r0 = max(int((cy - reach - self.y[0]) / ps), 0)
        r1 = min(int((cy + reach - self.y[0]) / ps) + 2, self.rows)
        box = (slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
        dx = self.x[box[1]][None, :] - np.float32(cx)
        dy = self.y[box[0]][:, None] - np.float32(cy)
        if angle:
            c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            dx, dy = dx * c + dy * s, dy * c - dx * s
        return box, (dx / a) ** 2 + (dy / b) ** 2 <= 1.0

    def _full_ellipse(
        self, cx: float, cy: float, a: float, b: float, angle: float = 0.0
    ) -> np.ndarray:
        box, mask = self._ellipse(cx, cy, a, b, angle)
        full = np.zeros((self.rows, self.columns), dtype=bool)
        full[box] = mask
        return full

    def _paint(
        self,
        img: np.ndarray,
        value: float,
        cx: float,
        cy: float,
        a: float,
        b: float,
        angle: float = 0.0,
        within: np.ndarray | None = None,
    ) -> None:
        """Set ``value`` inside an ellipse, optionally only where ``within`` is true."""
        if a <= 0.0 or b <= 0.0:
            return
        box, mask = self._ellipse(cx, cy, a, b, angle)
        if within is not None:
            mask &= within[box]
        img[box][mask] = value

    def _shell(
        self,
        img: np.ndarray,
        outer: float,
        inner: float,
        cx: float,
        cy: float,
        a: float,
        b: float,
        thickness: float,
        angle: float = 0.0,
    ) -> None:
        """Bone-like structure: dense cortex of ``thickness`` mm around a softer core."""
        self._paint(img, outer, cx, cy, a, b, angle)
        self._paint(img, inner, cx, cy, a - thickness, b - thickness, angle)

    def _stamp_discs(
        self, mask: np.ndarray, cx: np.ndarray, cy: np.ndarray, radius_mm: np.ndarray
    ) -> None:
        """Set small discs at many centres at once (vectorised over the centres)."""
        ps = self.pixel_spacing
        col = np.rint((cx - self.x[0]) / ps).astype(np.int64)
        row = np.rint((cy - self.y[0]) / ps).astype(np.int64)
        rad = np.clip(np.rint(radius_mm / ps), 1, 4).astype(np.int64)
        for r in np.unique(rad):
            sel = rad == r
            oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
            keep = ox * ox + oy * oy <= r * r + r  # "+ r" rounds the tiny discs nicely
            rr = (row[sel][:, None] + oy[keep][None, :]).ravel()
            cc = (col[sel][:, None] + ox[keep][None, :]).ravel()
            ok = (rr >= 0) & (rr < self.rows) & (cc >= 0) & (cc < self.columns)
            mask[rr[ok], cc[ok]] = True

    # -- rendering --------------------------------------------------------------------

    def _spine(self, t: float) -> tuple[float, float]:
        """Centre y and radius (mm) of the vertebral body; most anatomy hangs off it."""
        return (30.0 - 6.0 * t) * self._body_scale, (15.0 + 7.0 * t) * self._body_scale

    def z_position(self, index: int) -> float:
        """Patient z (mm) of slice ``index``; slices run head to feet, z decreasing."""
        return -index * self.slice_spacing

    def slice_t(self, index: int) -> float:
        return (index + 0.5) / self.slices

    def slice_hu(self, index: int) -> np.ndarray:
        """Render slice ``index`` as float32 HU (rows x columns), noise included."""
        if not 0 <= index < self.slices:
            raise IndexError(index)
        t = self.slice_t(index)
        z = self.z_position(index)
        img = np.full((self.rows, self.columns), AIR, dtype=np.float32)
        rng = np.random.default_rng([self.seed, 1, index])

        self._table(img)
        cav = self._body_wall(img, t)
        self._lungs(img, t, cav)
        self._mediastinum(img, t)
        self._abdomen(img, t, cav, rng)
        self._skeleton(img, t, z, cav)

        noise = rng.standard_normal((self.rows, self.columns), dtype=np.float32)
        # The blur divides white noise's sigma by 3; scale up first to land on sigma.
        img = _box3(img + noise * np.float32(3.0 * _NOISE_SIGMA_HU))
        return np.clip(np.rint(img), _HU_MIN, _HU_MAX, out=img)

    def slice_stored(self, index: int) -> np.ndarray:
        """Slice ``index`` as stored pixel values (int16, HU - RescaleIntercept)."""
        return (self.slice_hu(index) - np.float32(_INTERCEPT)).astype("<i2")

    def _table(self, img: np.ndarray) -> None:
        # Carbon-fibre patient table: two thin dense skins around a foam core.
        top = 104.0 * self._body_scale
        in_x = np.abs(self.x) <= 175.0
        for y0, y1, hu in (
            (top, top + 2.5, 250.0),
            (top + 2.5, top + 14.0, -750.0),
            (top + 14.0, top + 16.0, 250.0),
        ):
            rows = (self.y >= y0) & (self.y < y1)
            img[np.ix_(rows, in_x)] = hu

    def _body_wall(self, img: np.ndarray, t: float) -> _Cavity:
        """Skin, subcutaneous fat and muscle wall; returns the inner cavity geometry."""
        k = self._body_scale
        a = (158.0 + 10.0 * t) * k
        b = (100.0 + 8.0 * math.sin(math.pi * t)) * k
        cy = -4.0
        back = 100.0 * k  # lying supine flattens the back against the table
        flat = self._yy <= back
        body = self._full_ellipse(0.0, cy, a, b) & flat
        img[body] = SOFT  # skin
        fat = 10.0 + 16.0 * t  # thicker subcutaneous fat over the abdomen
        img[self._full_ellipse(0.0, cy, a - 1.5, b - 1.5) & flat] = FAT
        muscle = self._full_ellipse(0.0, cy, a - fat, b - fat) & (self._yy <= back - fat)
        img[muscle] = MUSCLE
        # Body cavity: rib cage in the thorax, peritoneum (visceral fat) in the abdomen.
        wall = 9.0 + 5.0 * t
        ca, cb, ccy = a - fat - wall, b - fat - wall - 8.0, cy - 10.0
        cavity = self._full_ellipse(0.0, ccy, ca, cb)
        img[cavity] = _lerp(30.0, -85.0, _smoothstep(t, 0.56, 0.70))
        # Paraspinal muscles lie either side of the spinous processes.
        vy, _ = self._spine(t)
        for side in (-1.0, 1.0):
            self._paint(img, MUSCLE, side * 36.0, vy + 42.0 * k, 30.0, 22.0 * k, within=body)
        return _Cavity(ca, cb, ccy, cavity)

    def _lungs(self, img: np.ndarray, t: float, cav: _Cavity) -> None:
        ca, cb, ccy, cavity = cav.a, cav.b, cav.cy, cav.mask
        # Right lung (image left) ends higher because the liver dome pushes it up.
        for side, scale in ((-1.0, _cap(t, -0.30, 0.60)), (1.0, _cap(t, -0.30, 0.66))):
            if scale <= 0.0:
                continue
            lx, la, lb = side * ca * 0.50, ca * 0.47 * scale, cb * 0.86 * min(1.0, scale * 1.25)
            lung = self._full_ellipse(lx, ccy + 8.0, la, lb) & cavity
            # Gravity-dependent density: posterior lung is slightly denser (supine).
            gradient = np.clip((self._yy - ccy) / cb, -1.0, 1.0) * 45.0
            img[lung] = (LUNG + gradient)[lung]
            # Pulmonary vessels: tracks positioned relative to this lung's ellipse.
            tr = self._lung_vessels
            active = tr.active(t) & ((tr.u0 * side) > -0.6)
            u, v = tr.position(t)
            vessels = np.zeros_like(cavity)
            # Vessels are thicker towards the hilum (the medial side of each lung).
            hilar = np.clip(0.6 - (u * side), 0.0, 1.0)
            radius = tr.radius * (0.5 + hilar)
            self._stamp_discs(
                vessels, lx + u[active] * la, ccy + 8.0 + v[active] * lb, radius[active]
            )
            vessels &= lung
            img[vessels] = 30.0

    def _mediastinum(self, img: np.ndarray, t: float) -> None:
        # Airways: trachea splitting into the main bronchi.
        if t < 0.13:
            self._paint(img, SOFT, 0.0, -18.0, 12.0, 11.0)
            self._paint(img, AIR, 0.0, -18.0, 9.5, 8.5)
        elif t < 0.22:
            for side in (-1.0, 1.0):
                self._paint(img, SOFT, side * 20.0, -10.0, 8.0, 8.0)
                self._paint(img, AIR, side * 20.0, -10.0, 6.0, 6.0)
        # Oesophagus, just in front of the spine, with a little air in its lumen.
        vy, rv = self._spine(t)
        if t < 0.62:
            self._paint(img, SOFT, 4.0, vy - rv - 8.0, 8.0, 7.0)
            self._paint(img, AIR, 4.0, vy - rv - 8.0, 2.5, 2.0)
        # Aortic arch, then ascending aorta and pulmonary trunk above the heart.
        if t < 0.08:
            self._paint(img, ARTERY, 6.0, 0.0, 40.0, 13.0, angle=65.0)
        if 0.05 < t < 0.30:
            self._paint(img, ARTERY, -14.0, -28.0, 15.0, 15.0)
        if 0.10 < t < 0.22:
            self._paint(img, 200.0, 16.0, -36.0, 14.0, 13.0)
        # Heart with contrast-filled chambers; the ventricles are denser than the wall.
        h = _cap(t, 0.12, 0.52)
        if h > 0.0:
            self._paint(img, 60.0, 22.0, -20.0, 66.0 * h, 50.0 * h, angle=-32.0)
            self._paint(img, HEART_BLOOD, 40.0, -14.0, 24.0 * h, 19.0 * h, angle=-32.0)
            self._paint(img, 200.0, 6.0, -44.0, 26.0 * h, 14.0 * h, angle=-20.0)
            if t < 0.40:
                self._paint(img, 220.0, 16.0, 14.0, 24.0 * h, 11.0 * h)
            # Epicardial fat around the apex.
            self._paint(img, FAT, 72.0 * h, -45.0 * h, 10.0 * h, 6.0 * h, angle=-32.0)

    def _abdomen(self, img: np.ndarray, t: float, cav: _Cavity, rng: np.random.Generator) -> None:
        ca, cb, ccy, cavity = cav.a, cav.b, cav.cy, cav.mask
        if t < 0.45:
            return
        # Bowel loops first, so the solid organs painted afterwards sit on top of them.
        tr = self._bowel
        u, v = tr.position(t)
        for i in np.flatnonzero(tr.active(t)):
            bx, by = float(u[i]) * ca * 0.75, ccy - 15.0 + float(v[i]) * cb * 0.55
            r = float(tr.radius[i])
            contents = (ORAL_CONTRAST, FLUID, AIR)[int(tr.kind[i])]
            self._paint(img, 50.0, bx, by, r, r * 0.85, within=cavity)
            self._paint(img, contents, bx, by, r - 3.0, r * 0.85 - 3.0, within=cavity)
        # Colon: gas and stool give the typical mottled lumen.
        colon = np.zeros_like(cavity)
        if t > 0.68:
            colon |= self._full_ellipse(-ca * 0.80, ccy + 5.0, 20.0, 18.0)
        if t > 0.60:
            colon |= self._full_ellipse(ca * 0.82, ccy + 18.0, 16.0, 15.0)
        if 0.64 < t < 0.70:
            colon |= self._full_ellipse(0.0, ccy - cb * 0.65, ca * 0.65, 16.0)
        colon &= cavity
        if colon.any():
            mottle = _box3(rng.standard_normal(colon.shape, dtype=np.float32)) > 0.15
            img[colon] = np.where(mottle, -950.0, -150.0)[colon]

        # Liver (patient right = image left), with portal vein and gallbladder.
        # Its section stays near full size over most of its extent (hence the 1.5 gain),
        # filling the right upper quadrant out to the body wall.
        vy, rv = self._spine(t)
        lv = min(1.0, 1.5 * _cap(t, 0.42, 0.86))
        if lv > 0.0:
            self._paint(
                img,
                LIVER,
                -ca * 0.38,
                ccy + 4.0,
                ca * 0.68 * lv,
                cb * 0.95 * lv,
                angle=-10.0,
                within=cavity,
            )
            if 0.60 < t < 0.72:
                self._paint(img, VEIN + 20.0, -30.0, vy - rv - 25.0, 9.0, 8.0)
            if 0.62 < t < 0.74:
                self._paint(img, FLUID, -ca * 0.38, ccy - cb * 0.45, 15.0, 13.0, within=cavity)
        # Stomach: wall, fluid contents and an air-fluid level (air rises anteriorly).
        st = _cap(t, 0.46, 0.70)
        if st > 0.0:
            sx, sy, sa, sb = ca * 0.35, ccy - cb * 0.30, 48.0 * st, 36.0 * st
            self._paint(img, 65.0, sx, sy, sa, sb, angle=20.0, within=cavity)
            box, inner = self._ellipse(sx, sy, sa - 4.0, sb - 4.0, angle=20.0)
            if inner.size:
                level = np.broadcast_to(self.y[box[0]][:, None] < sy - 0.35 * sb, inner.shape)
                img[box][inner] = np.where(level, AIR, FLUID + 5.0)[inner]
        sp = _cap(t, 0.48, 0.72)
        if sp > 0.0:
            self._paint(
                img,
                SPLEEN,
                ca * 0.68,
                ccy + cb * 0.45,
                30.0 * sp,
                52.0 * sp,
                angle=35.0,
                within=cavity,
            )
        if 0.64 < t < 0.75:
            self._paint(img, PANCREAS, 15.0, vy - rv - 24.0, 58.0, 12.0, angle=-12.0)
        # Kidneys: enhancing cortex, renal sinus fat medially; the right sits lower.
        for side, kt in ((-1.0, _cap(t, 0.66, 0.90)), (1.0, _cap(t, 0.62, 0.86))):
            if kt > 0.0:
                kx, ky = side * 64.0, vy + 12.0
                self._paint(img, KIDNEY, kx, ky, 30.0 * kt, 20.0 * kt, angle=side * 55.0)
                self._paint(
                    img,
                    FAT,
                    kx - side * 12.0 * kt,
                    ky - 4.0,
                    11.0 * kt,
                    7.0 * kt,
                    angle=side * 55.0,
                )
        # Psoas muscles grow downwards beside the lumbar spine.
        ps = _smoothstep(t, 0.70, 1.0)
        if ps > 0.0:
            for side in (-1.0, 1.0):
                self._paint(img, MUSCLE, side * (rv + 14.0), vy + 2.0, 24.0 * ps, 20.0 * ps)

    def _skeleton(self, img: np.ndarray, t: float, z: float, cav: _Cavity) -> None:
        ca, cb, ccy = cav.a, cav.b, cav.cy
        vy, rv = self._spine(t)
        # Great vessels: the descending aorta runs left of the thoracic spine and moves
        # in front of the lumbar spine before bifurcating; the IVC lies to its right.
        s = _smoothstep(t, 0.3, 0.7)
        ax, ay = _lerp(27.0, 12.0, s), _lerp(vy - 6.0, vy - rv - 11.0, s)
        if t < 0.93:
            self._paint(img, ARTERY, ax, ay, 12.0 - 2.5 * t, 12.0 - 2.5 * t)
        else:
            for side in (-1.0, 1.0):
                self._paint(img, ARTERY, side * 16.0, vy - rv - 8.0, 7.0, 7.0)
        if t > 0.52:
            self._paint(img, VEIN, -22.0, vy - rv - 8.0, 12.0, 10.0)

        # Vertebra: 30 mm period, a 5 mm intervertebral disc between bodies.
        if (abs(z) / 30.0) % 1.0 < 5.0 / 30.0:
            self._paint(img, DISC, 0.0, vy, rv, rv * 0.9)
        else:
            self._shell(img, CORTICAL_BONE, CANCELLOUS_BONE, 0.0, vy, rv, rv * 0.9, 2.5)
        canal = vy + rv * 0.9 + 9.0
        self._paint(img, 850.0, 0.0, canal, 15.0, 14.0)  # neural arch
        for side in (-1.0, 1.0):  # transverse processes
            self._paint(img, 800.0, side * 24.0, canal - 2.0, 14.0, 5.0, angle=side * 15.0)
        self._paint(img, 800.0, 0.0, canal + 22.0, 5.0, 14.0)  # spinous process
        self._paint(img, 20.0, 0.0, canal, 9.0, 8.5)  # spinal canal (cord and CSF)

        # Ribs: cross-sections along the rib cage, drifting around it with z as real
        # ribs slope downwards; only where the thorax is.
        if t < 0.66:
            n = 8
            for side in (-1.0, 1.0):
                base = np.linspace(0.35, 2.75, n) + (z / 30.0) % (2.4 / n)
                for theta in base:
                    rx = side * (ca + 5.0) * math.sin(theta)
                    ry = ccy + (cb + 5.0) * math.cos(theta) * -1.0
                    tangent = (
                        math.degrees(
                            math.atan2((cb + 5.0) * math.sin(theta), (ca + 5.0) * math.cos(theta))
                        )
                        * side
                    )
                    self._shell(img, 850.0, 260.0, rx, ry, 7.5, 5.0, 1.8, angle=tangent)
            if 0.04 < t < 0.52:
                self._shell(img, 700.0, 250.0, 0.0, ccy - cb - 7.0, 16.0, 6.5, 1.8)
        # Scapulae behind the upper rib cage.
        if t < 0.32:
            for side in (-1.0, 1.0):
                self._shell(
                    img,
                    800.0,
                    300.0,
                    side * ca * 0.78,
                    ccy + cb * 0.72 + 14.0,
                    40.0,
                    5.0,
                    2.0,
                    angle=side * -32.0,
                )
        # Iliac wings appear at the bottom of the series.
        il = _smoothstep(t, 0.86, 1.0)
        if il > 0.0:
            for side in (-1.0, 1.0):
                self._shell(
                    img,
                    CORTICAL_BONE,
                    CANCELLOUS_BONE,
                    side * ca * 0.64,
                    ccy + cb * 0.45,
                    6.0 * il + 3.0,
                    55.0 * il + 3.0,
                    2.5,
                    angle=side * -32.0,
                )


def hu_to_uint8(hu: np.ndarray, low: float = -160.0, high: float = 240.0) -> np.ndarray:
    """Window HU values to 8-bit grey levels (default: the soft-tissue window)."""
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / (high - low))
    grey: np.ndarray = np.clip(scaled, 0, 255).astype(np.uint8)
    return grey


def _uid(*parts: object) -> UID:
    # Deterministic: pydicom hashes the entropy sources under its own root UID.
    return generate_uid(entropy_srcs=["pacs-benchmarks-ct-phantom", *map(str, parts)])


def _ds3(values: Sequence[float]) -> list[str]:
    # DS values formatted explicitly so headers never depend on float repr details.
    return [f"{v:.6g}" for v in values]


def generate_ct_series(
    directory: str | os.PathLike[str],
    slices: int = 300,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
) -> list[Path]:
    """Write a deterministic axial CT series to ``directory`` and return the file paths.

    Files are Part 10, Explicit VR Little Endian, CT Image Storage, one per slice, named
    ``CT000001.dcm`` ... in instance order.  The study UID depends only on ``seed``; the
    series and instance UIDs also depend on the geometry, so several phantom series with
    the same seed can coexist in one archive as series of the same study.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    phantom = CTPhantom(slices=slices, rows=rows, columns=columns, seed=seed)

    study_uid = _uid(seed, "study")
    geometry = (seed, slices, rows, columns)
    series_uid = _uid(*geometry, "series")
    frame_uid = _uid(*geometry, "frame-of-reference")
    ps = phantom.pixel_spacing
    origin_x, origin_y = float(phantom.x[0]), float(phantom.y[0])

    paths: list[Path] = []
    for k in range(slices):
        sop_uid = _uid(*geometry, "instance", k)
        z = phantom.z_position(k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20240115"
        ds.StudyTime = ds.SeriesTime = "093000"
        ds.AcquisitionTime = ds.ContentTime = f"0930{min(59, k * 60 // slices):02d}"
        ds.AccessionNumber = f"PH{seed:08d}"
        ds.Modality = "CT"
        ds.Manufacturer = "pacs benchmarks"
        # Non-ASCII on purpose: exercises the declared UTF-8 character set.
        ds.InstitutionName = "Clinique Fantôme"
        ds.ReferringPhysicianName = "RÉFÉRENT^Médecin"
        ds.StationName = "PHANTOM01"
        ds.StudyDescription = "CT THORAX ABDOMEN WITH CONTRAST"
        ds.SeriesDescription = f"AXIAL {_SLICE_THICKNESS_MM:g}mm SOFT TISSUE"
        ds.ManufacturerModelName = "CTPhantom"
        ds.PatientName = "PHANTOM^CT"
        ds.PatientID = f"PHANTOM-{seed}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.PatientAge = "054Y"
        ds.BodyPartExamined = "CHEST"
        ds.ContrastBolusAgent = "IODINE"
        ds.SliceThickness = f"{_SLICE_THICKNESS_MM:g}"
        ds.KVP = "120"
        ds.SpacingBetweenSlices = f"{phantom.slice_spacing:.6g}"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = f"{_FOV_MM:.6g}"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = str(seed)
        ds.SeriesNumber = 2
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds3((origin_x, origin_y, z))
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.6g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.PixelSpacing = _ds3((ps, ps))
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 1
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.WindowCenterWidthExplanation = "SOFT TISSUE"
        ds.RescaleIntercept = f"{_INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = phantom.slice_stored(k).tobytes()
        ds["PixelData"].VR = "OW"

        path = out / f"CT{k + 1:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a deterministic synthetic CT series.")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = generate_ct_series(args.outdir, args.slices, args.rows, args.columns, args.seed)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} files ({size / 1e6:.1f} MB) to {args.outdir} in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
