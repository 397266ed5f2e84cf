"""`leukexp-predict MODEL IMAGES... --out predictions.csv`: score new images with a study's model.

MODEL is a run folder (or its `model/`), `runs:/<run id>/model` or `models:/NAME/VERSION` on the tracking
store; IMAGES are files or folders (searched recursively), read as in training. Optional test-time
augmentation (`--tta paper|flips`: the mean of the views' probabilities) and activation maps (`--cam DIR`).

With a bag model (an aggregator, `bags=images`): a folder of one patient's images is one bag, a folder of such
folders one bag each; one diagnosis per bag, and each image's weight in `<out>_attention.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.config.compose import group_options
from leukexp.console import console, progress_bar
from leukexp.csv_files import write_csv
from leukexp.data.augment import Augmentation
from leukexp.data.io import BadImageError, decode_image, file_digest, image_notes, is_image_file
from leukexp.errors import LeukexpError, user_errors
from leukexp.files import atomic_path
from leukexp.inference.classifier import Classifier, load_classifier
from leukexp.inference.model_uri import resolve_model
from leukexp.inference.serving import probability_frame
from leukexp.runtime.process import prepare_process


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found_here = sorted(p for p in path.rglob("*") if is_image_file(p))
            images = [p for p in found_here if not any(part.startswith(".") for part in p.relative_to(path).parts)]
            if len(images) < len(found_here):
                console.print(f"[yellow]left out:[/] {len(found_here) - len(images)} image(s) in hidden folders or"
                              f" with hidden names under {path} (a name starting with '.')")
            if not images:
                raise LeukexpError(f"{path}: no images (.jpg .jpeg .png .tif .tiff .bmp) in this folder")
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise LeukexpError(f"{path}: no such file or folder")
    return found


def tta_views(name: str, seed: int = 42) -> Augmentation | None:
    """The offline views of `--tta NAME` (None for `none`), as the study's augmentation configs define them."""
    if name == "none":
        return None
    from leukexp.data.augment import named_views

    return named_views(name, seed, key="--tta")


def score(classifier: Classifier, paths: list[Path], views: Augmentation | None = None, batch_size: int = 32
          ) -> tuple[pd.DataFrame, dict[Path, np.ndarray], list[str]]:
    """Probabilities per readable image (mean over the views with TTA), the images, and the unreadable ones."""
    files, rows, images, bad = [], [], {}, []
    with progress_bar() as progress:
        task = progress.add_task("scoring", total=len(paths))
        for start in range(0, len(paths), batch_size):
            chunk = []
            for path in paths[start:start + batch_size]:
                try:
                    data = path.read_bytes()
                    images[path] = decode_image(data, path)
                    for note in image_notes(data, path):
                        console.print(f"[yellow]note:[/] {note}")
                    chunk.append((path, file_digest(data)))
                except (BadImageError, OSError) as error:
                    bad.append(str(error))
            for path, key in chunk:
                image = images[path]
                variants = [image] if views is None else [
                    image if v == 0 else views.apply(image, v, key) for v in range(views.n_views)]
                files.append(str(path))
                rows.append(classifier.predict_proba(variants).mean(axis=0))
            progress.update(task, advance=len(paths[start:start + batch_size]))
    if not rows:
        return pd.DataFrame(), images, bad
    probs = np.stack(rows)
    frame = probability_frame(probs, classifier.classes, classifier.decisions(probs))  # as the served model
    frame.insert(0, "file", files)
    return frame, images, bad


def given_name(item: str) -> str:
    """An input as the user gave it, as a bag name's first part (`cohortA/`, `./x/` -> `cohortA`, `x`)."""
    text = Path(item).as_posix().rstrip("/")
    return Path(text).name if text not in ("", ".") else Path.cwd().name


def collect_bags(inputs: list[str], per_image: bool = False) -> dict[str, list[Path]]:
    """Bags of images for an aggregator, named by their path relative to what was given, so that two cohorts'
    patients `p1` stay two bags (`cohortA/p1`, `cohortB/p1`): a folder whose sub-folders hold images is a folder of
    bags (one per sub-folder: a folder of patient folders); a folder holding images is one bag; loose files are one
    bag. With `per_image` (a tile model whose bag is one field) every image is a bag of its own. Two bags that would
    share a name are one line; hidden sub-folders left out are said once."""
    bags: dict[str, list[Path]] = {}
    where: dict[str, str] = {}
    loose: list[Path] = []
    hidden: list[str] = []

    def add(name: str, paths: list[Path], origin: Path) -> None:
        if name in bags:
            raise LeukexpError(f"two bags would be named {name!r} ({where[name]} and {origin}); give each patient"
                               " folder once, or folders whose names differ")
        bags[name], where[name] = paths, str(origin)

    for item in inputs:
        path = Path(item).expanduser()
        if not path.is_dir():
            loose.extend(collect_images([item]))
            continue
        base = given_name(item)
        if per_image:
            for image in collect_images([str(path)]):
                add(f"{base}/{image.relative_to(path).as_posix()}", [image], image)
            continue
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        hidden += [str(p) for p in folders if p.name.startswith(".")]
        inner = [p for p in folders if not p.name.startswith(".")]
        own = [p for p in path.iterdir() if is_image_file(p)]
        for folder in ([] if own else inner):
            add(f"{base}/{folder.name}", collect_images([str(folder)]), folder)
        if own or not inner:
            add(base, collect_images([str(path)]), path)
    if hidden:
        console.print(f"[yellow]left out:[/] {len(hidden)} hidden folder(s) (a name starting with '.'), e.g."
                      f" {hidden[0]}; rename them to score them")
    for image in loose:
        if per_image:
            add(given_name(str(image)), [image], image)
    if loose and not per_image:
        add("images", loose, loose[0].parent)
    return bags


def read_noted(path: Path) -> np.ndarray:
    """An image as training reads it, with what a reader should know said once (a multi-page TIFF's other pages)."""
    data = path.read_bytes()
    for note in image_notes(data, path):
        console.print(f"[yellow]note:[/] {note}")
    return decode_image(data, path)


def score_bags(classifier: Classifier, bags: dict[str, list[Path]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per bag (bag, instances, predicted, p_<class>, decision) and every instance's weight in its bag,
    with its box where the model cuts tiles."""
    rows, weights, shares = [], [], []
    for name, paths in bags.items():
        scored = classifier.predict_bag([read_noted(p) for p in paths], [str(p) for p in paths])
        rows.append((name, len(scored.weights), scored.probs))
        shares.append(scored.shares())
        if scored.differential is not None:  # a differential head: the patient's count, as a hematologist reads it
            counts = ", ".join(f"{row.type} {row.count} ({row.percent:.1f} %)"
                               for row in scored.differential.itertuples())
            console.print(f"{name}: differential {counts}")
        boxes = [box if box is not None else (None,) * 4 for box in scored.boxes]
        x, y, width, height = (list(c) for c in zip(*boxes, strict=True)) if boxes else ([], [], [], [])
        weights.append(pd.DataFrame({"bag": name, "file": [str(paths[i]) for i in scored.sources], "x": x, "y": y,
                                     "width": width, "height": height, "weight": scored.weights}))
    probs = np.stack([row[2] for row in rows])
    frame = probability_frame(probs, classifier.classes, classifier.decisions(probs))
    frame.insert(0, "instances", [row[1] for row in rows])
    frame.insert(0, "bag", [row[0] for row in rows])
    if any(shares):
        frame = frame.join(pd.DataFrame(shares))
    table = pd.concat(weights, ignore_index=True)
    if table["x"].isna().all():
        table = table.drop(columns=["x", "y", "width", "height"])
    table["rank"] = table.groupby("bag")["weight"].rank(ascending=False, method="first").astype(int)
    return frame, table.sort_values(["bag", "rank"], kind="stable")


def predict_bags(classifier: Classifier, inputs: list[str], out: Path) -> None:
    """`leukexp-predict` with an aggregator: a diagnosis per bag, and the attention table beside `out` (both
    written, or neither)."""
    bags = collect_bags(inputs, per_image=classifier.bags.per_image)
    empty = [name for name, paths in bags.items() if not paths]
    if empty:
        raise LeukexpError(f"bag {empty[0]}: no images in it; give a folder of images (one patient) or a folder of"
                           " such folders")
    attention = out.with_name(f"{out.stem}_attention.csv")
    for target in (out, attention):
        if target.is_dir():
            raise LeukexpError(f"{target}: is a folder; give --out a file path (the attention table is written"
                               f" beside it as {attention.name})")
    frame, table = score_bags(classifier, bags)
    with atomic_path(out) as staging, atomic_path(attention) as beside:
        write_csv(frame, staging)
        write_csv(table, beside)
    for _, row in frame.iterrows():
        sure = row[f"p_{row['predicted']}"]
        decision = f", decision {row['decision']}" if "decision" in frame else ""
        unit = "tiles" if "x" in table else "images"
        console.print(f"{row['bag']}: {row['predicted']} (p {sure:.3f}{decision}; {row['instances']} {unit})")
    console.print(f"wrote {len(frame)} bag prediction(s) to {out} and the instances' weights to {attention}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry of `leukexp-predict`: 0 when every image was scored."""
    parser = argparse.ArgumentParser(prog="leukexp-predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="run folder, runs:/<run id>/model or models:/NAME/VERSION")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV to write")
    parser.add_argument("--tta", choices=["none", *group_options("augmentation")], default="none",
                        help="test-time views (mean probability): an augmentation config of fixed views")
    parser.add_argument("--cam", type=Path, default=None, help="folder for one activation-map PNG per image")
    parser.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                        help="error: exit non-zero naming unreadable images (the others are still written);"
                             " skip: list them and go on")
    parser.add_argument("--tracking-uri", default=None, help="store for runs:/ and models:/ (default:"
                                                               " $MLFLOW_TRACKING_URI, else ./mlruns/mlflow.db)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--allow-weight-mismatch", action="store_true",
                        help="score even where the backbone weights here differ from those the head was trained on")
    args = parser.parse_args(argv)
    prepare_process()
    with user_errors("leukexp-predict"):
        classifier = load_classifier(resolve_model(args.model, args.tracking_uri), args.allow_weight_mismatch)
        if classifier.scores_bags:
            predict_bags(classifier, args.images, args.out)
            return 0
        paths = collect_images(args.images)
        frame, images, bad = score(classifier, paths, tta_views(args.tta), args.batch_size)
        with atomic_path(args.out) as staging:
            write_csv(frame, staging)
        counts = ", ".join(f"{c} {n}" for c, n in frame["predicted"].value_counts().items()) if len(frame) else "-"
        console.print(f"wrote {len(frame)} prediction(s) to {args.out} ({counts})")
        if args.cam is not None and len(frame):
            scored = [Path(f) for f in frame["file"]]
            written = _write_maps(classifier, [images[p] for p in scored], scored, args.cam)
            console.print(f"wrote {len(written)} activation map(s) to {args.cam}")
        if bad and args.on_bad_image == "skip":
            console.print(f"[yellow]skipped {len(bad)} unreadable image(s):[/]")
            for message in bad:
                console.print(f"  {message}")
        elif bad:
            raise LeukexpError(f"{len(bad)} unreadable image(s), e.g. {bad[0]}; the {len(frame)} others are in"
                               f" {args.out} (or pass --on-bad-image skip)")
    return 0


def _write_maps(classifier: Classifier, images: list[np.ndarray], paths: list[Path], folder: Path) -> list[Path]:
    from leukexp.inference.cam import write_maps

    names = [f"{i:05d}_{p.stem}" for i, p in enumerate(paths)]  # unique even when two folders share a name
    return write_maps(classifier, images, names, folder)


if __name__ == "__main__":
    raise SystemExit(main())
