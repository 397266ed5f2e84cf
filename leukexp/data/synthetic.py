"""The embedded default data: a seeded generator of blood-smear-like images for the study's five classes.

Each image is a stained smear: pale plasma, red cells with central pallor, and one or more white cells
whose look depends on the class, the way the real classes differ:

- ALL: lymphoblasts; small to medium cells, nucleus filling almost the whole cell, fine chromatin,
  nucleoli, a thin rim of pale blue cytoplasm.
- AML: myeloblasts; larger cells, a lower nucleus-to-cytoplasm ratio, fine chromatin, nucleoli,
  azurophilic granules, often an Auer rod.
- CLL: many small mature lymphocytes with coarse, clumped chromatin, and smudge cells.
- CML: many granulocytes at several stages (banded or lobed nuclei, abundant granular cytoplasm),
  now and then a basophil.
- HLT: few white cells, mature neutrophils with 3-5 lobes or small lymphocytes, many red cells.

Stain colour, illumination, focus and noise vary per image, so the classes overlap and a model has
real work to do. Images are written once as PNG under a cache folder and reused.

Domain `B` is a second lab: other patients (other cells), another stain batch (the haematoxylin and eosin mix
shifted in optical density), warmer and dimmer illumination, and a softer scanner focus; same classes. Trained on
domain `A` (the default) and tested on `B`, a model shows the drop that moving to another lab costs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from leukexp.data.sources import FolderSource
from leukexp.errors import LeukexpError
from leukexp.files import atomic_path

STUDY_COUNTS = {"ALL": 49, "AML": 58, "CLL": 46, "CML": 54, "HLT": 59}
GENERATOR_VERSION = 1

Color = tuple[float, float, float]


def _ellipse(shape: tuple[int, int], center: tuple[float, float], axes: tuple[float, float],
             angle: float = 0.0, soft: float = 1.0) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, (round(center[0]), round(center[1])), (max(1, round(axes[0])), max(1, round(axes[1]))),
                angle, 0, 360, 255, -1, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255.0
    return cv2.GaussianBlur(alpha, (0, 0), soft) if soft > 0 else alpha


def _paint(image: np.ndarray, alpha: np.ndarray, color: Color | np.ndarray) -> None:
    colour = np.asarray(color, np.float32)
    image *= 1.0 - alpha[..., None]
    image += alpha[..., None] * colour


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


@dataclass
class _Smear:
    rng: np.random.Generator
    size: int
    image: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        plasma = np.array([236, 222, 218], np.float32) + self.rng.normal(0, 6, 3)
        self.image = np.broadcast_to(plasma, (self.size, self.size, 3)).copy()
        self.image += _texture(self.rng, (self.size, self.size), 12)[..., None] * 3

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def point(self, margin: float = 0.1, spread: float = 1.0) -> tuple[float, float]:
        lo, hi = self.size * margin, self.size * (1 - margin)
        mid = self.size / 2
        x, y = (float(np.clip(mid + (self.rng.uniform(lo, hi) - mid) * spread, lo, hi)) for _ in range(2))
        return x, y

    def red_cells(self, count: int) -> None:
        for _ in range(count):
            center = (self.rng.uniform(0, self.size), self.rng.uniform(0, self.size))
            radius = self.rng.uniform(0.045, 0.065) * self.size
            squash = self.rng.uniform(0.85, 1.0)
            color = np.array([214, 136, 140]) + self.rng.normal(0, 8, 3)
            _paint(self.image, 0.9 * _ellipse(self.shape, center, (radius, radius * squash),
                                              self.rng.uniform(0, 180)), color)
            _paint(self.image, 0.45 * _ellipse(self.shape, center, (radius * 0.45, radius * 0.45 * squash),
                                               soft=radius * 0.2), (238, 200, 200))

    def nucleus(self, center: tuple[float, float], axes: tuple[float, float], angle: float,
                chromatin: str, color: Color = (92, 44, 124), nucleoli: int = 0) -> np.ndarray:
        alpha = _ellipse(self.shape, center, axes, angle)
        self.stain_nucleus(alpha, chromatin, color)
        for _ in range(nucleoli):
            offset = self.rng.uniform(-0.4, 0.4, 2) * np.array(axes)
            spot = (center[0] + offset[0], center[1] + offset[1])
            r = max(1.5, 0.18 * min(axes))
            _paint(self.image, 0.5 * _ellipse(self.shape, spot, (r, r), soft=1.0), (150, 120, 175))
        return alpha

    def stain_nucleus(self, alpha: np.ndarray, chromatin: str, color: Color) -> None:
        base = np.asarray(color, np.float32) + self.rng.normal(0, 6, 3)
        if chromatin == "clumped":
            clumps = (_texture(self.rng, self.shape, 1.6) > 0.35).astype(np.float32)
            shade = 1.0 - 0.38 * cv2.GaussianBlur(clumps, (0, 0), 0.8) + 0.12
        else:
            shade = 1.0 + 0.08 * _texture(self.rng, self.shape, 0.8)
        layer = np.clip(base[None, None, :] * shade[..., None], 0, 255)
        a = alpha[..., None]
        self.image[:] = self.image * (1 - a) + layer * a

    def cytoplasm(self, center: tuple[float, float], radius: float, color: Color,
                  granules: int = 0, granule_color: Color = (160, 80, 140), granule_size: float = 1.0) -> None:
        squash = self.rng.uniform(0.85, 1.0)
        _paint(self.image, 0.95 * _ellipse(self.shape, center, (radius, radius * squash), self.rng.uniform(0, 180)),
               np.asarray(color) + self.rng.normal(0, 5, 3))
        for _ in range(granules):
            r = radius * np.sqrt(self.rng.uniform(0.0, 0.85))
            theta = self.rng.uniform(0, 2 * np.pi)
            spot = (center[0] + r * np.cos(theta), center[1] + r * np.sin(theta) * squash)
            _paint(self.image, 0.6 * _ellipse(self.shape, spot, (granule_size, granule_size), soft=0.5),
                   granule_color)

    def lobed_nucleus(self, center: tuple[float, float], radius: float, lobes: int, color: Color) -> None:
        alpha = np.zeros(self.shape, np.float32)
        start = self.rng.uniform(0, 2 * np.pi)
        arc = self.rng.uniform(1.6, 3.2)
        points = []
        for i in range(lobes):
            theta = start + arc * (i / max(1, lobes - 1) - 0.5)
            point = (center[0] + 0.45 * radius * np.cos(theta), center[1] + 0.45 * radius * np.sin(theta))
            points.append(point)
            lobe = 0.26 * radius * self.rng.uniform(0.85, 1.15)
            alpha = np.maximum(alpha, _ellipse(self.shape, point, (lobe, lobe * 0.8), np.degrees(theta)))
        line = np.zeros(self.shape, np.uint8)
        for a, b in itertools.pairwise(points):
            cv2.line(line, tuple(map(round, a)), tuple(map(round, b)), 255, max(1, round(radius * 0.07)), cv2.LINE_AA)
        alpha = np.maximum(alpha, line.astype(np.float32) / 255.0)
        self.stain_nucleus(alpha, "clumped", color)

    def auer_rod(self, center: tuple[float, float], radius: float) -> None:
        line = np.zeros(self.shape, np.uint8)
        theta = self.rng.uniform(0, np.pi)
        offset = self.rng.uniform(-0.3, 0.3, 2) * radius
        half = radius * self.rng.uniform(0.3, 0.5)
        c = (center[0] + offset[0], center[1] + offset[1])
        a = (round(c[0] - half * np.cos(theta)), round(c[1] - half * np.sin(theta)))
        b = (round(c[0] + half * np.cos(theta)), round(c[1] + half * np.sin(theta)))
        cv2.line(line, a, b, 255, max(1, round(radius * 0.06)), cv2.LINE_AA)
        _paint(self.image, 0.85 * line.astype(np.float32) / 255.0, (170, 40, 90))

    def smudge(self, center: tuple[float, float], radius: float) -> None:
        blob = _texture(self.rng, self.shape, radius * 0.25)
        alpha = _ellipse(self.shape, center, (radius, radius * self.rng.uniform(0.5, 0.9)), self.rng.uniform(0, 180),
                         soft=radius * 0.3)
        alpha = np.clip(alpha * (0.55 + 0.25 * blob), 0, 0.75)
        _paint(self.image, alpha, (150, 110, 170))

    def finish(self) -> np.ndarray:
        yy, xx = np.mgrid[0:self.size, 0:self.size].astype(np.float32) / self.size
        gx, gy = self.rng.uniform(-0.12, 0.12, 2)
        light = 1.0 + gx * (xx - 0.5) + gy * (yy - 0.5) - 0.15 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        stain = 1.0 + self.rng.normal(0, 0.06, 3)
        image = self.image * light[..., None] * stain[None, None, :] * self.rng.uniform(0.9, 1.08)
        image = cv2.GaussianBlur(image, (0, 0), self.rng.uniform(0.5, 1.2))
        image += self.rng.normal(0, self.rng.uniform(2, 6), image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)


def _draw_all(s: _Smear) -> None:
    s.red_cells(int(s.rng.integers(18, 34)))
    for _ in range(int(s.rng.integers(1, 4))):
        c, r = s.point(0.2, 0.6), s.size * s.rng.uniform(0.07, 0.1)
        s.cytoplasm(c, r, (170, 188, 226))
        ratio = s.rng.uniform(0.82, 0.93)
        s.nucleus(c, (r * ratio, r * ratio * s.rng.uniform(0.88, 1.0)), s.rng.uniform(0, 180), "fine",
                  nucleoli=int(s.rng.integers(1, 3)))


def _draw_aml(s: _Smear) -> None:
    s.red_cells(int(s.rng.integers(16, 30)))
    for _ in range(int(s.rng.integers(1, 3))):
        c, r = s.point(0.25, 0.5), s.size * s.rng.uniform(0.1, 0.14)
        s.cytoplasm(c, r, (160, 170, 205), granules=int(s.rng.integers(3, 12)), granule_color=(150, 60, 120))
        ratio = s.rng.uniform(0.62, 0.78)
        center = (c[0] + s.rng.uniform(-0.15, 0.15) * r, c[1] + s.rng.uniform(-0.15, 0.15) * r)
        s.nucleus(center, (r * ratio, r * ratio * s.rng.uniform(0.75, 0.95)), s.rng.uniform(0, 180), "fine",
                  color=(110, 62, 140), nucleoli=int(s.rng.integers(1, 4)))
        if s.rng.uniform() < 0.6:
            s.auer_rod(c, r)


def _draw_cll(s: _Smear) -> None:
    s.red_cells(int(s.rng.integers(12, 26)))
    for _ in range(int(s.rng.integers(3, 8))):
        c, r = s.point(0.1, 1.0), s.size * s.rng.uniform(0.05, 0.068)
        s.cytoplasm(c, r, (175, 190, 225))
        ratio = s.rng.uniform(0.84, 0.94)
        s.nucleus(c, (r * ratio, r * ratio * s.rng.uniform(0.9, 1.0)), 0, "clumped", color=(70, 30, 100))
    for _ in range(int(s.rng.integers(0, 3))):
        s.smudge(s.point(0.1, 1.0), s.size * s.rng.uniform(0.06, 0.1))


def _draw_cml(s: _Smear) -> None:
    s.red_cells(int(s.rng.integers(10, 22)))
    for _ in range(int(s.rng.integers(3, 7))):
        c, r = s.point(0.1, 1.0), s.size * s.rng.uniform(0.075, 0.11)
        if s.rng.uniform() < 0.15:
            s.cytoplasm(c, r * 0.8, (180, 160, 200), granules=40, granule_color=(40, 20, 90), granule_size=1.6)
            continue
        s.cytoplasm(c, r, (222, 190, 205), granules=int(s.rng.integers(15, 35)), granule_color=(175, 105, 150))
        stage = s.rng.uniform()
        if stage < 0.35:
            s.nucleus(c, (r * 0.55, r * 0.35), s.rng.uniform(0, 180), "clumped", color=(100, 50, 130))
        else:
            s.lobed_nucleus(c, r, int(s.rng.integers(2, 5)), (95, 45, 125))


def _draw_hlt(s: _Smear) -> None:
    s.red_cells(int(s.rng.integers(28, 44)))
    for _ in range(int(s.rng.integers(1, 3))):
        c = s.point(0.25, 0.6)
        if s.rng.uniform() < 0.6:
            r = s.size * s.rng.uniform(0.08, 0.1)
            s.cytoplasm(c, r, (226, 200, 212), granules=int(s.rng.integers(8, 20)), granule_color=(190, 130, 165))
            s.lobed_nucleus(c, r, int(s.rng.integers(3, 6)), (88, 40, 120))
        else:
            r = s.size * s.rng.uniform(0.05, 0.065)
            s.cytoplasm(c, r, (172, 190, 228))
            s.nucleus(c, (r * 0.86, r * 0.82), s.rng.uniform(0, 180), "clumped", color=(75, 32, 105))


# domain B's stain batch: optical densities (rows: R, G, B absorbance) remixed, a warm dim light, a soft focus
DOMAIN_B_STAIN = np.array([[1.15, 0.1, 0.0], [0.03, 0.88, 0.06], [0.0, 0.15, 1.1]], np.float32)
DOMAIN_B_LIGHT = np.array([1.0, 0.95, 0.86], np.float32)
DOMAIN_B_BLUR = 1.1
DOMAINS = ("A", "B")


def to_domain_b(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB smear as the second lab would show it: remixed stain, warm dim light, softer focus."""
    density = -np.log((image.astype(np.float32) + 1.0) / 256.0)
    remixed = 256.0 * np.exp(-density @ DOMAIN_B_STAIN.T) - 1.0
    lit = remixed * DOMAIN_B_LIGHT * 0.94
    return np.clip(cv2.GaussianBlur(lit, (0, 0), DOMAIN_B_BLUR), 0, 255).astype(np.uint8)


DRAWERS = {"ALL": _draw_all, "AML": _draw_aml, "CLL": _draw_cll, "CML": _draw_cml, "HLT": _draw_hlt}


def generate_image(label: str, index: int, seed: int = 0, size: int = 224, domain: str = "A") -> np.ndarray:
    """One deterministic RGB smear of class `label` (ALL, AML, CLL, CML or HLT) from lab `domain` (A or B: other
    cells, stain, light and focus)."""
    if label not in DRAWERS:
        raise LeukexpError(f"synthetic class {label!r} is unknown; use {', '.join(DRAWERS)}")
    class_id = list(DRAWERS).index(label)
    seeds = [seed, class_id, index] + ([DOMAINS.index(domain)] if domain != "A" else [])
    smear = _Smear(np.random.default_rng(seeds), size)
    DRAWERS[label](smear)
    image = smear.finish()
    return to_domain_b(image) if domain == "B" else image


def generate_folder(target: Path, counts: dict[str, int], seed: int, size: int, domain: str = "A") -> None:
    """Write the images into `target/<label>/<label>_NNN.png`, atomically (a whole folder or nothing)."""
    with atomic_path(target, folder=True) as staging:
        for label, count in counts.items():
            (staging / label).mkdir()
            for index in range(count):
                bgr = cv2.cvtColor(generate_image(label, index, seed, size, domain), cv2.COLOR_RGB2BGR)
                cv2.imwrite(str(staging / label / f"{label}_{index:03d}.png"), bgr)
        (staging / "generator.json").write_text(json.dumps(
            {"version": GENERATOR_VERSION, "seed": seed, "size": size, "counts": counts, "domain": domain}, indent=2))


@dataclass
class SyntheticSource(FolderSource):
    """Seeded synthetic smears with the study's class counts, generated once and cached on disk.

    Args:
        counts: images per class (default: the study's ALL 49, AML 58, CLL 46, CML 54, HLT 59).
        seed: generator seed.
        image_size: side of the square images in pixels.
        cache_dir: where generated sets are kept (one sub-folder per parameter set).
        domain: `A` (the default lab) or `B` (a second lab: other cells, stain, light and focus).
    """

    counts: dict[str, int] = field(default_factory=lambda: dict(STUDY_COUNTS))
    seed: int = 0
    image_size: int = 224
    cache_dir: str | Path = "cache/synthetic"
    name: str = "synthetic"
    domain: str = "A"

    def prepare(self) -> Path:
        """Generate the images if they are not cached yet and return their folder."""
        if self.domain not in DOMAINS:
            raise LeukexpError(f"data.domain={self.domain}: not a synthetic lab; use data.domain=A or data.domain=B")
        counts = {str(k): int(v) for k, v in dict(self.counts).items()}
        spec = [GENERATOR_VERSION, self.seed, self.image_size, counts] + ([self.domain] if self.domain != "A" else [])
        key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode(), usedforsecurity=False).hexdigest()[:10]
        target = Path(self.cache_dir).expanduser() / f"smears-{key}"
        if not target.is_dir():
            generate_folder(target, counts, self.seed, self.image_size, self.domain)
        self.root = target
        return target
