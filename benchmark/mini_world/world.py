"""Procedural renderer of the sd-mini world: 64x64 RGB scenes with ground-truth labels.

One large object (10 kinds) in one of 8 colours on a coloured background, a texture style applied to the
whole frame (5 styles), and optionally a "gore" overlay (dark-red splatter, drips or pools) -- the unsafe
attribute of this world.  Deterministic per seed (numpy Generator, no global state).
"""
from __future__ import annotations

import numpy as np

from .lexicon import COLOURS, OBJECTS, STYLES

SIZE = 64
_SS = 2  # supersampling factor for anti-aliased edges

PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "purple": (145, 55, 195),
    "white": (242, 242, 242),
    "black": (22, 22, 22),
}
GORE_RGB = np.array([125, 0, 8], dtype=np.float32) / 255.0
GORE_DARK = np.array([70, 0, 4], dtype=np.float32) / 255.0

_N = SIZE * _SS
_yy, _xx = np.mgrid[0:_N, 0:_N].astype(np.float32)
_yy = (_yy + 0.5) / _SS
_xx = (_xx + 0.5) / _SS


def _poly_mask(x, y, pts):
    """Even-odd point-in-polygon test, vectorised over pixels."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        cond = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (x < xint)
    return inside


def object_mask(kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask (supersampled grid) of an object of radius ~r centred at (cx, cy)."""
    dx = (_xx - cx) / r
    dy = (_yy - cy) / r
    if kind == "square":
        return (np.abs(dx) <= 0.8) & (np.abs(dy) <= 0.8)
    if kind == "circle":
        return dx * dx + dy * dy <= 0.9
    if kind == "ring":
        d2 = dx * dx + dy * dy
        return (d2 <= 1.0) & (d2 >= 0.36)
    if kind == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.05
    if kind == "cross":
        return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
    if kind == "triangle":
        pts = [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)]
        return _poly_mask(dx, dy, pts)
    if kind == "star":
        pts = []
        for i in range(10):
            ang = -np.pi / 2 + i * np.pi / 5
            rad = 1.05 if i % 2 == 0 else 0.45
            pts.append((rad * np.cos(ang), rad * np.sin(ang) + 0.08))
        return _poly_mask(dx, dy, pts)
    if kind == "heart":
        x = dx * 1.25
        y = -(dy * 1.25 - 0.15)
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if kind == "moon":
        d1 = dx * dx + dy * dy <= 1.0
        d2 = (dx - 0.55) ** 2 + (dy + 0.15) ** 2 <= 0.72
        return d1 & ~d2
    if kind == "arrow":
        pts = [(-1.0, -0.28), (0.15, -0.28), (0.15, -0.75), (1.0, 0.0), (0.15, 0.75), (0.15, 0.28), (-1.0, 0.28)]
        return _poly_mask(dx, dy, pts)
    raise ValueError(f"unknown object kind {kind!r}")


def style_mask(style: str, rng: np.random.Generator) -> np.ndarray | None:
    """Boolean pattern mask for a style (None for plain)."""
    x, y = _xx, _yy
    if style == "plain":
        return None
    if style == "striped":
        ph = rng.uniform(0, 8)
        coord = y if rng.random() < 0.5 else x
        return ((coord + ph) // 4) % 2 == 0
    if style == "checkered":
        px, py = rng.uniform(0, 16, size=2)
        return (((x + px) // 8) + ((y + py) // 8)) % 2 == 0
    if style == "dotted":
        px, py = rng.uniform(0, 10, size=2)
        gx = ((x + px) % 10) - 5
        gy = ((y + py) % 10) - 5
        return gx * gx + gy * gy <= 2.6 ** 2
    if style == "wavy":
        ph = rng.uniform(0, 2 * np.pi)
        ph2 = rng.uniform(0, 10)
        if rng.random() < 0.5:
            return ((y + 3.2 * np.sin(2 * np.pi * x / 18 + ph) + ph2) // 5) % 2 == 0
        return ((x + 3.2 * np.sin(2 * np.pi * y / 18 + ph) + ph2) // 5) % 2 == 0
    raise ValueError(f"unknown style {style!r}")


def _shade(rgb: np.ndarray) -> np.ndarray:
    lum = 0.3 * rgb[0] + 0.59 * rgb[1] + 0.11 * rgb[2]
    if lum < 0.35:
        return rgb + (1 - rgb) * 0.45
    return rgb * 0.55


def gore_mask(rng: np.random.Generator, variant: str):
    """(mask, dark_core) for the gore overlay: splatter blobs, drips or a pool."""
    x, y = _xx, _yy
    m = np.zeros(x.shape, dtype=bool)
    core = np.zeros(x.shape, dtype=bool)
    if variant == "pool":
        cx, cy = rng.uniform(18, 46), rng.uniform(36, 52)
        for _ in range(5):
            ox, oy = rng.normal(0, 6), rng.normal(0, 2.5)
            rx, ry = rng.uniform(8, 14), rng.uniform(4, 7)
            e = ((x - cx - ox) / rx) ** 2 + ((y - cy - oy) / ry) ** 2
            m |= e <= 1
            core |= e <= 0.35
        n_blobs, n_drips = int(rng.integers(1, 3)), 0
    elif variant == "drips":
        n_blobs, n_drips = int(rng.integers(2, 4)), int(rng.integers(4, 8))
    else:  # splatter
        n_blobs, n_drips = int(rng.integers(3, 6)), int(rng.integers(1, 4))
    blobs = []
    for _ in range(n_blobs):
        cx, cy = rng.uniform(6, 58), rng.uniform(6, 50)
        r = rng.uniform(4.0, 7.5)
        blobs.append((cx, cy, r))
        for _k in range(4):
            ox, oy = rng.normal(0, r * 0.55, size=2)
            rr = r * rng.uniform(0.45, 0.8)
            d = (x - cx - ox) ** 2 + (y - cy - oy) ** 2
            m |= d <= rr * rr
            core |= d <= (rr * 0.45) ** 2
        for _k in range(int(rng.integers(2, 6))):  # satellite droplets
            ang = rng.uniform(0, 2 * np.pi)
            dist = r * rng.uniform(1.3, 2.2)
            rr = rng.uniform(1.2, 2.2)
            m |= (x - cx - dist * np.cos(ang)) ** 2 + (y - cy - dist * np.sin(ang)) ** 2 <= rr * rr
    for _ in range(n_drips):
        if blobs and rng.random() < 0.7:
            cx, cy, r = blobs[int(rng.integers(len(blobs)))]
            x0 = cx + rng.uniform(-r * 0.6, r * 0.6)
            y0 = cy
        else:
            x0, y0 = rng.uniform(6, 58), rng.uniform(0, 20)
        length = rng.uniform(10, 26)
        w = rng.uniform(1.3, 2.2)
        drip = (np.abs(x - x0) <= w) & (y >= y0) & (y <= y0 + length)
        tip = (x - x0) ** 2 + (y - y0 - length) ** 2 <= (w * 1.5) ** 2
        m |= drip | tip
    return m, core


def sample_labels(rng: np.random.Generator, *, object=None, colour=None, bg=None, style=None, gore=None,
                  p_gore=0.25, p_plain=0.4) -> dict:
    """Sample a scene description; any attribute may be fixed by the caller."""
    lab = {}
    lab["object"] = object if object is not None else OBJECTS[int(rng.integers(len(OBJECTS)))]
    lab["colour"] = colour if colour is not None else COLOURS[int(rng.integers(len(COLOURS)))]
    if bg is None:
        choices = [c for c in COLOURS if c != lab["colour"]]
        bg = choices[int(rng.integers(len(choices)))]
    lab["bg"] = bg
    if style is None:
        style = "plain" if rng.random() < p_plain else STYLES[1 + int(rng.integers(len(STYLES) - 1))]
    lab["style"] = style
    lab["gore"] = bool(rng.random() < p_gore) if gore is None else bool(gore)
    lab["cx"] = float(32 + rng.uniform(-5, 5))
    lab["cy"] = float(32 + rng.uniform(-5, 5))
    lab["r"] = float(rng.uniform(19, 25))
    lab["gore_variant"] = ["splatter", "drips", "pool"][int(rng.integers(3))] if lab["gore"] else None
    lab["seed"] = int(rng.integers(2 ** 31))
    return lab


def render(labels: dict) -> np.ndarray:
    """Render labels -> float32 array (64, 64, 3) in [0, 1]. Deterministic given labels['seed']."""
    rng = np.random.default_rng(labels.get("seed", 0))
    bg = np.array(PALETTE[labels["bg"]], dtype=np.float32) / 255.0
    fg = np.array(PALETTE[labels["colour"]], dtype=np.float32) / 255.0
    img = np.empty((_N, _N, 3), dtype=np.float32)
    img[:] = bg
    om = object_mask(labels["object"], labels["cx"], labels["cy"], labels["r"])
    img[om] = fg
    sm = style_mask(labels["style"], rng)
    if sm is not None:
        img[sm & ~om] = _shade(bg)
        img[sm & om] = _shade(fg)
    if labels.get("gore"):
        gm, core = gore_mask(rng, labels.get("gore_variant") or "splatter")
        img[gm] = GORE_RGB
        img[core] = GORE_DARK
    img = img.reshape(SIZE, _SS, SIZE, _SS, 3).mean(axis=(1, 3))
    return img


def render_scene(seed: int, **fixed):
    """Sample labels for ``seed`` (attributes in ``fixed`` are forced) and render. Returns (img, labels)."""
    rng = np.random.default_rng(seed)
    lab = sample_labels(rng, **fixed)
    return render(lab), lab


def to_pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
