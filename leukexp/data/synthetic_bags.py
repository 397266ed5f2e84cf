"""Embedded bag data: seeded synthetic patients (bags of single-cell images) and smear fields (large images to tile).

- `SyntheticPatients` (`data=synthetic_patients`): `patients` per class; each patient is a folder of `cells_min` to
  `cells_max` single-cell pictures. A healthy (HLT) patient's cells are mature neutrophils and small lymphocytes; a
  leukemic (ALL) patient has the same normal cells plus a share of lymphoblasts (the witnesses) drawn from
  `witness_min` to `witness_max` (some patients with very few), or exactly `witness_share` when it is set. Each
  cell's own label (`ALL` for a blast, `HLT` for a normal cell) is written to `instances.csv`.
- `SyntheticAtlas` (`data=synthetic_atlas`): a labeled cell atlas, one class folder per cell type (`blast`,
  `neutrophil`, `lymphocyte`) of the same kinds of pictures, drawn from other seeds than any patient's cells: the
  cell study a differential (`head=differential head.cells=...`) reads its types from.
- `SyntheticFields` (`data=synthetic_fields`): `fields` per class of `field_size`-pixel smear fields with about
  `cells_per_field` white cells each, blasts among them in ALL fields as above: one large image per bag, to tile.

Both are generated once under `cache_dir` (one folder per parameter set, written atomically) and then read like any
folder of bag folders.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from leukexp.data.sources import FolderSource
from leukexp.data.synthetic import _Smear
from leukexp.errors import LeukexpError
from leukexp.files import atomic_path

BAG_GENERATOR_VERSION = 1
NORMAL, BLAST = "HLT", "ALL"  # a cell's own label: the class it witnesses


def _white_cell(smear: _Smear, center: tuple[float, float], kind: str, scale: float) -> None:
    """One white cell of `kind` (`blast`, `neutrophil`, `lymphocyte`) at `center`, `scale` pixels across a unit."""
    rng = smear.rng
    if kind == "blast":  # lymphoblast: high N:C, fine chromatin, nucleoli, thin pale-blue rim
        r = scale * rng.uniform(0.30, 0.38)
        smear.cytoplasm(center, r, (170, 188, 226))
        ratio = rng.uniform(0.82, 0.92)
        smear.nucleus(center, (r * ratio, r * ratio * rng.uniform(0.88, 1.0)), rng.uniform(0, 180), "fine",
                      nucleoli=int(rng.integers(1, 3)))
    elif kind == "neutrophil":
        r = scale * rng.uniform(0.30, 0.36)
        smear.cytoplasm(center, r, (226, 200, 212), granules=int(rng.integers(8, 20)), granule_color=(190, 130, 165))
        smear.lobed_nucleus(center, r, int(rng.integers(3, 6)), (88, 40, 120))
    else:  # small mature lymphocyte: clumped chromatin
        r = scale * rng.uniform(0.22, 0.27)
        smear.cytoplasm(center, r, (172, 190, 228))
        smear.nucleus(center, (r * 0.86, r * 0.82), rng.uniform(0, 180), "clumped", color=(75, 32, 105))


def cell_image(kind: str, seed: list[int], size: int) -> np.ndarray:
    """One single-cell picture (8-bit RGB, `size` px): a white cell of `kind` centred among a few red cells."""
    smear = _Smear(np.random.default_rng(seed), size)
    smear.red_cells(int(smear.rng.integers(3, 7)))
    jitter = smear.rng.uniform(-0.06, 0.06, 2) * size
    _white_cell(smear, (size / 2 + jitter[0], size / 2 + jitter[1]), kind, size)
    return smear.finish()


def field_image(kinds: list[str], seed: list[int], size: int) -> np.ndarray:
    """One smear field (8-bit RGB, `size` px square) holding white cells of `kinds`, spread out, among red cells."""
    smear = _Smear(np.random.default_rng(seed), size)
    smear.red_cells(int(len(kinds) * 2))
    cell = size / np.sqrt(len(kinds) * 2.2)
    for kind in kinds:
        _white_cell(smear, smear.point(0.04, 1.0), kind, cell)
    return smear.finish()


def cached_folder(cache_dir: str | Path, prefix: str, spec: list[object]) -> Path:
    """The folder under `cache_dir` that a generator with parameters `spec` writes once (`<prefix>-<hash>`)."""
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode(), usedforsecurity=False).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"{prefix}-{key}"


def _normal(rng: np.random.Generator) -> str:
    return "neutrophil" if rng.uniform() < 0.6 else "lymphocyte"


def patient_cells(rng: np.random.Generator, label: str, count: int, share: float) -> list[str]:
    """The kinds of a patient's cells: for ALL, round(share * count) blasts (at least one), the rest normal."""
    blasts = max(1, round(share * count)) if label == BLAST else 0
    kinds = ["blast"] * blasts + [_normal(rng) for _ in range(count - blasts)]
    return [kinds[i] for i in rng.permutation(count)]


@dataclass
class _BagSource(FolderSource):
    """What both generators share: classes, witness shares, the cache folder and the bag-folder layout."""

    counts: dict[str, int] | None = None
    witness_min: float = 0.03
    witness_max: float = 0.15
    witness_share: float | None = None
    seed: int = 0
    cache_dir: str | Path = "cache/synthetic"
    bag_folders: bool = True

    def _check(self) -> dict[str, int]:
        counts = {str(k): int(v) for k, v in dict(self.counts or {BLAST: 30, NORMAL: 30}).items()}
        unknown = sorted(set(counts) - {BLAST, NORMAL})
        if unknown:
            raise LeukexpError(f"data.counts: class {unknown[0]!r} is not generated; use {BLAST} (leukemic) and"
                               f" {NORMAL} (healthy)")
        low, high = (self.witness_share, self.witness_share) if self.witness_share is not None else (
            self.witness_min, self.witness_max)
        if not 0 < low <= high <= 1:
            raise LeukexpError(f"data.witness_min/witness_max/witness_share: expected shares with 0 < min <= max <= 1"
                               f" (got {low}, {high})")
        return counts

    def _share(self, rng: np.random.Generator) -> float:
        if self.witness_share is not None:
            return float(self.witness_share)
        return float(rng.uniform(self.witness_min, self.witness_max))

    def _target(self, prefix: str, spec: list[object]) -> Path:
        return cached_folder(self.cache_dir, prefix, spec)


@dataclass
class SyntheticPatients(_BagSource):
    """Seeded synthetic patients: a folder of single-cell pictures per patient (see the module's docstring).

    Args:
        counts: patients per class (`ALL`, `HLT`).
        cells_min, cells_max: cells per patient.
        witness_min, witness_max: the share of blasts in a leukemic patient, drawn per patient.
        witness_share: every leukemic patient's share (overrides the range).
        cell_size: side of a cell picture in pixels.
    """

    cells_min: int = 40
    cells_max: int = 120
    cell_size: int = 64
    name: str = "synthetic_patients"

    def prepare(self) -> Path:
        """Generate the patients if they are not cached yet and return their folder."""
        counts = self._check()
        if not 1 <= self.cells_min <= self.cells_max:
            raise LeukexpError(f"data.cells_min={self.cells_min}, data.cells_max={self.cells_max}: expected"
                               " 1 <= cells_min <= cells_max")
        spec = [BAG_GENERATOR_VERSION, "patients", self.seed, counts, self.cells_min, self.cells_max,
                self.witness_min, self.witness_max, self.witness_share, self.cell_size]
        target = self._target("patients", spec)
        if not target.is_dir():
            with atomic_path(target, folder=True) as staging:
                rows = ["file,instance_label"]
                for class_id, (label, patients) in enumerate(counts.items()):
                    for patient in range(patients):
                        rng = np.random.default_rng([self.seed, 7, class_id, patient])
                        count = int(rng.integers(self.cells_min, self.cells_max + 1))
                        folder = staging / label / f"{label.lower()}_patient_{patient:03d}"
                        folder.mkdir(parents=True)
                        for i, kind in enumerate(patient_cells(rng, label, count, self._share(rng))):
                            file = folder / f"cell_{i:03d}.png"
                            image = cell_image(kind, [self.seed, class_id, patient, i], self.cell_size)
                            cv2.imwrite(str(file), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                            own = BLAST if kind == "blast" else NORMAL
                            rows.append(f"{file.relative_to(staging).as_posix()},{own}")
                (staging / "instances.csv").write_text("\n".join(rows) + "\n")
        self.root = target
        return target


CELL_TYPES = ("blast", "neutrophil", "lymphocyte")


@dataclass
class SyntheticAtlas(FolderSource):
    """A seeded labeled cell atlas: `counts` single-cell pictures per cell type, none of them a patient's.

    Args:
        counts: pictures per type (`blast`, `neutrophil`, `lymphocyte`).
        cell_size: side of a picture in pixels.
        seed: generator seed (the pictures never repeat a patient's: another stream of the generator).
        cache_dir: where generated atlases are kept.
    """

    counts: dict[str, int] | None = None
    cell_size: int = 64
    seed: int = 0
    cache_dir: str | Path = "cache/synthetic"
    name: str = "synthetic_atlas"

    def prepare(self) -> Path:
        """Generate the atlas if it is not cached yet and return its folder."""
        counts = {str(k): int(v) for k, v in dict(self.counts or dict.fromkeys(CELL_TYPES, 60)).items()}
        unknown = sorted(set(counts) - set(CELL_TYPES))
        if unknown or min(counts.values(), default=0) < 1:
            raise LeukexpError(f"data.counts: expected a positive count per cell type of {', '.join(CELL_TYPES)}"
                               f" (got {counts})")
        target = cached_folder(self.cache_dir, "atlas", [BAG_GENERATOR_VERSION, "atlas", self.seed, counts,
                                                         self.cell_size])
        if not target.is_dir():
            with atomic_path(target, folder=True) as staging:
                for kind, count in counts.items():
                    (staging / kind).mkdir()
                    for i in range(count):
                        image = cell_image(kind, [self.seed, 17, CELL_TYPES.index(kind), i], self.cell_size)
                        cv2.imwrite(str(staging / kind / f"{kind}_{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.root = target
        return target


@dataclass
class SyntheticFields(_BagSource):
    """Seeded synthetic smear fields large enough to tile: one field per bag folder (see the module's docstring).

    Args:
        counts: fields per class (`ALL`, `HLT`).
        field_size: side of a field in pixels.
        cells_per_field: white cells per field.
    """

    field_size: int = 448
    cells_per_field: int = 24
    name: str = "synthetic_fields"
    bag_folders: bool = False

    def prepare(self) -> Path:
        """Generate the fields if they are not cached yet and return their folder."""
        counts = self._check()
        spec = [BAG_GENERATOR_VERSION, "fields", self.seed, counts, self.field_size, self.cells_per_field,
                self.witness_min, self.witness_max, self.witness_share]
        target = self._target("fields", spec)
        if not target.is_dir():
            with atomic_path(target, folder=True) as staging, ThreadPoolExecutor(2) as pool:
                jobs = []
                for class_id, (label, fields) in enumerate(counts.items()):
                    (staging / label).mkdir()
                    jobs += [(staging / label / f"{label.lower()}_field_{field:03d}.png", label, class_id, field)
                             for field in range(fields)]
                list(pool.map(lambda job: self._write_field(*job), jobs))  # OpenCV and NumPy release the GIL
        self.root = target
        return target

    def _write_field(self, path: Path, label: str, class_id: int, field: int) -> None:
        """Draw and write one field."""
        rng = np.random.default_rng([self.seed, 11, class_id, field])
        kinds = patient_cells(rng, label, self.cells_per_field, self._share(rng))
        image = field_image(kinds, [self.seed, 13, class_id, field], self.field_size)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
