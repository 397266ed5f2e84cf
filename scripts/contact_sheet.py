"""Write a contact sheet PNG of an image and its augmented views (as the study's Figure 3.2).

    python scripts/contact_sheet.py IMAGE --out sheet.png [--augmentation paper] [--seed 42] [override ...]

Overrides are Hydra overrides of the augmentation group, e.g. `augmentation.repeats=1`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from leukexp.config.compose import config_dir
from leukexp.data.io import file_digest, read_image
from leukexp.errors import LeukexpError, user_errors
from leukexp.evaluation.plots import contact_sheet


def main(argv: list[str] | None = None) -> Path:
    """Parse arguments, render every view of the image and save the sheet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="an image file (.jpg .png .tif .bmp)")
    parser.add_argument("--out", type=Path, default=Path("contact_sheet.png"), help="PNG to write")
    parser.add_argument("--augmentation", default="paper", help="augmentation config (paper, none, ...)")
    parser.add_argument("--seed", type=int, default=42, help="the run seed (views depend on it)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. augmentation.repeats=1")
    args = parser.parse_args(argv)
    with user_errors("contact_sheet"):
        if not args.image.is_file():
            raise LeukexpError(f"{args.image}: no such image file")
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=[f"augmentation={args.augmentation}", f"seed={args.seed}",
                                              "paths.root_dir=.", *args.overrides])
        views = instantiate(cfg.augmentation, _convert_="all")
        if views.online:
            raise LeukexpError(f"augmentation={args.augmentation} is online (random): pick an offline one")
        image = read_image(args.image)
        key = file_digest(args.image.read_bytes())
        images = [views.apply(image, k, key) for k in range(views.n_views)]
        columns = max(1, views.n_views // max(1, len(views.flips) + 1))
        out = contact_sheet(images, [v.name for v in views.views], args.out, columns=columns)
    print(f"wrote {out} ({views.n_views} views)")
    return out


if __name__ == "__main__":
    main()
