"""Semi-real bags from the public ALL 4-class cells: a bag is `benign` when all its cells are benign hematogones, and
`malignant` when a share of them (the witnesses) are lymphoblasts (Early, Pre, Pro). With `--atlas`, a labeled cell
atlas is set aside first: `--atlas-per-type` cells of each type (Benign, Early, Pre, Pro) that no bag holds, for the
cell study a differential reads its types from (docs/heads-and-bags.md: From an atlas to a diagnosis).

    python scripts/semi_real_bags.py ../shared/data/all4class --out cache/semi_real/patients \\
        --atlas cache/semi_real/atlas --atlas-benign 100 --cells 16
    leukexp-train -m experiment=atlas_cells                 # the cell study on the atlas
    leukexp-report --experiment atlas_cells --register atlas
    leukexp-train -m experiment=differential_semi_real      # differential (types from models:/atlas) vs abmil, meanpool

Every image is used once at most (identical copies, which the set has many of, count as one), so no cell is in
two bags or in a bag and the atlas, and no bag leaks into another's fold. Bags and the atlas are symbolic links to the
images (nothing is copied), and `instances.csv` gives each cell its own label (`malignant` or `benign`) for the
witness metrics.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

MALIGNANT = ("Early", "Pre", "Pro")


def unique_images(folder: Path) -> list[Path]:
    """The images of a class folder with identical copies left out (by content), in name order."""
    seen, kept = set(), []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        digest = hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(path)
    return kept


def link(path: Path, target: Path) -> None:
    """A symbolic link at `path` to `target` (kept if it is there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.symlink_to(Path(target).resolve())


def set_aside(source: Path, atlas: Path, per_type: int, rng: np.random.Generator, benign: int | None = None
              ) -> set[Path]:
    """Write `atlas/<type>/` of `per_type` links per cell type (`benign` of Benign, the scarce type, when given);
    return the images used."""
    used = set()
    for name in ("Benign", *MALIGNANT):
        count = benign if name == "Benign" and benign is not None else per_type
        chosen = list(rng.permutation(unique_images(source / name)))[:count]
        for path in chosen:
            link(atlas / name / Path(path).name, path)
        used |= {Path(p) for p in chosen}
    return used


def build(source: Path, out: Path, bags_per_class: int, cells: int, low: float, high: float, seed: int,
          atlas: Path | None = None, atlas_per_type: int = 0, atlas_benign: int | None = None) -> Path:
    """Write `out/<benign|malignant>/<bag>/` of links and `out/instances.csv` (and the atlas first); return `out`."""
    rng = np.random.default_rng(seed)
    used = set_aside(source, atlas, atlas_per_type, rng, atlas_benign) if atlas is not None else set()
    benign = [p for p in rng.permutation(unique_images(source / "Benign")) if Path(p) not in used]
    blasts = [p for p in rng.permutation([p for name in MALIGNANT for p in unique_images(source / name)])
              if Path(p) not in used]
    rows = ["file,instance_label"]
    for label in ("benign", "malignant"):
        for bag in range(bags_per_class):
            witnesses = max(1, round(rng.uniform(low, high) * cells)) if label == "malignant" else 0
            if len(benign) < cells - witnesses:
                raise SystemExit(f"not enough benign cells for {bags_per_class} bags of {cells}; lower either")
            members = [(benign.pop(), "benign") for _ in range(cells - witnesses)]
            members += [(blasts.pop(), "malignant") for _ in range(witnesses)]
            folder = out / label / f"{label}_{bag:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (path, own) in enumerate(rng.permutation(np.array(members, dtype=object))):
                target = folder / f"cell_{i:03d}{Path(path).suffix}"
                link(target, path)
                rows.append(f"{target.relative_to(out).as_posix()},{own}")
    (out / "instances.csv").write_text("\n".join(rows) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the all4class folder (Benign, Early, Pre, Pro)")
    parser.add_argument("--out", type=Path, required=True, help="where the bag folders are written (links)")
    parser.add_argument("--bags-per-class", type=int, default=12)
    parser.add_argument("--cells", type=int, default=20, help="cells per bag")
    parser.add_argument("--witness", type=float, nargs=2, default=(0.05, 0.15), metavar=("LOW", "HIGH"),
                        help="the share of lymphoblasts in a malignant bag, drawn per bag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atlas", type=Path, default=None, help="also write a labeled cell atlas here (links)")
    parser.add_argument("--atlas-per-type", type=int, default=150, help="atlas cells per type")
    parser.add_argument("--atlas-benign", type=int, default=None,
                        help="atlas cells of Benign (default: --atlas-per-type); the bags need the rest")
    args = parser.parse_args(argv)
    for folder in (args.out, args.atlas):
        if folder is not None and folder.exists() and any(folder.iterdir()):
            raise SystemExit(f"{folder} is not empty; give a new folder")
    out = build(args.source, args.out, args.bags_per_class, args.cells, *args.witness, args.seed, args.atlas,
                args.atlas_per_type, args.atlas_benign)
    atlas = 3 * args.atlas_per_type + (args.atlas_benign if args.atlas_benign is not None else args.atlas_per_type)
    print(f"wrote {2 * args.bags_per_class} bags of {args.cells} cells to {out}"
          + (f" and {atlas} atlas cells to {args.atlas}" if args.atlas else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
