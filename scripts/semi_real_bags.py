"""Semi-real bags from the public ALL 4-class cells: a bag is `benign` when all its cells are benign hematogones, and
`malignant` when a share of them (the witnesses) are lymphoblasts (Early, Pre, Pro).

    python scripts/semi_real_bags.py ../shared/data/all4class --out cache/semi_real_bags
    leukexp-train -m experiment=mil_baseline data=folder data.root=cache/semi_real_bags task=malignant_vs_benign \\
        'task.mapping={malignant: [malignant], benign: [benign]}' mlflow.experiment_name=mil_semi_real

Every image is used once at most (identical copies, which the set has many of, count as one), so no cell is in
two bags and no bag leaks into another's fold. Bags are symbolic links to the images (nothing is copied), and
`instances.csv` gives each cell its own label (`malignant` or `benign`) for the witness metrics.
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


def build(source: Path, out: Path, bags_per_class: int, cells: int, low: float, high: float, seed: int) -> Path:
    """Write `out/<benign|malignant>/<bag>/` of links and `out/instances.csv`; return `out`."""
    rng = np.random.default_rng(seed)
    benign = list(rng.permutation(unique_images(source / "Benign")))
    blasts = list(rng.permutation([p for name in MALIGNANT for p in unique_images(source / name)]))
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
                link = folder / f"cell_{i:03d}{Path(path).suffix}"
                if not link.exists():
                    link.symlink_to(Path(path).resolve())
                rows.append(f"{link.relative_to(out).as_posix()},{own}")
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
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty; give a new folder")
    out = build(args.source, args.out, args.bags_per_class, args.cells, *args.witness, args.seed)
    print(f"wrote {2 * args.bags_per_class} bags of {args.cells} cells to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
