"""What decided a bag: the instance attention table, the most and least attended instances of test bags, and
tiled fields with their tiles' attention drawn over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from leukexp.data.io import read_image
from leukexp.data.tiles import TileViews

# bags drawn per picture, and instances per bag in the panel (most attended, then least)
PANEL_BAGS = 6
MOST, LEAST = 6, 3


def attention_table(instances: pd.DataFrame, catalog: pd.DataFrame, bag_names: np.ndarray, weights: np.ndarray,
                    views: object) -> pd.DataFrame:
    """One row per instance of the scored bags: bag, file, tile box (empty for whole images), its own label and its
    weight (a bag's weights sum to 1), most attended first within each bag."""
    boxes = [views.tiling.box(t) if isinstance(views, TileViews) else (None,) * 4 for t in instances["tile"]]
    x, y, width, height = (list(column) for column in zip(*boxes, strict=True)) if boxes else ([], [], [], [])
    table = pd.DataFrame({
        "bag": bag_names[instances["unit"].to_numpy()],
        "file": catalog["file"].to_numpy()[instances["source"].to_numpy()],
        "x": x, "y": y, "width": width, "height": height,
        "instance_label": instances["instance_label"].to_numpy(),
        "weight": weights,
    })
    table["rank"] = table.groupby("bag")["weight"].rank(ascending=False, method="first").astype(int)
    return table.sort_values(["bag", "rank"], kind="stable").reset_index(drop=True)


def _crop(path: str, row: pd.Series) -> np.ndarray:
    image = read_image(path)
    if pd.isna(row["x"]):
        return image
    x, y, w, h = int(row["x"]), int(row["y"]), int(row["width"]), int(row["height"])
    return image[y:y + h, x:x + w]


def chosen_bags(predictions: pd.DataFrame, count: int = PANEL_BAGS) -> list[str]:
    """Test bags worth a look: per class, the most confidently right and the most confidently wrong."""
    probs = predictions.filter(like="p_").to_numpy()
    picked: list[str] = []
    for label in predictions["label"].unique():
        rows = predictions[predictions["label"] == label]
        sure = probs[rows.index].max(1)
        right = rows[rows["predicted"] == label].assign(sure=sure[(rows["predicted"] == label).to_numpy()])
        wrong = rows[rows["predicted"] != label].assign(sure=sure[(rows["predicted"] != label).to_numpy()])
        for part in (right, wrong):
            if len(part):
                picked.append(str(part.sort_values("sure", ascending=False)["file"].iloc[0]))
    return picked[:count]


def attention_panel(table: pd.DataFrame, paths: dict[str, str], bags: list[str], out: Path,
                    titles: dict[str, str]) -> Path:
    """A row per bag: its most attended instances, then its least, each titled with its weight (and own label)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = MOST + LEAST
    figure, axes = plt.subplots(len(bags), columns, figsize=(1.5 * columns, 1.8 * len(bags)), squeeze=False)
    for row_axes, bag in zip(axes, bags, strict=True):
        rows = table[table["bag"] == bag]
        shown = pd.concat([rows.head(MOST), rows.tail(LEAST) if len(rows) > MOST else rows.iloc[0:0]])
        for ax in row_axes:
            ax.axis("off")
        for ax, (_, item) in zip(row_axes, shown.iterrows(), strict=False):
            ax.imshow(_crop(paths[item["file"]], item))
            own = f" {item['instance_label']}" if item["instance_label"] else ""
            ax.set_title(f"{item['weight']:.3f}{own}", fontsize=7)
        row_axes[0].text(-0.1, 0.5, titles.get(bag, bag), transform=row_axes[0].transAxes, fontsize=7,
                         ha="right", va="center")
    figure.suptitle("most attended (left) and least attended (right) instances of test bags", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def field_overlays(table: pd.DataFrame, paths: dict[str, str], bags: list[str], out: Path,
                   titles: dict[str, str]) -> Path:
    """Each tiled bag's image with its tiles' attention drawn over it (warmer: more attention)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(bags), figsize=(4 * len(bags), 4), squeeze=False)
    for ax, bag in zip(axes[0], bags, strict=True):
        rows = table[table["bag"] == bag]
        file = rows["file"].iloc[0]
        image = read_image(paths[file]).astype(np.float32) / 255
        heat = np.zeros(image.shape[:2], np.float32)
        top = max(float(rows["weight"].max()), 1e-12)
        for _, item in rows[rows["file"] == file].iterrows():
            x, y, w, h = int(item["x"]), int(item["y"]), int(item["width"]), int(item["height"])
            heat[y:y + h, x:x + w] = np.maximum(heat[y:y + h, x:x + w], item["weight"] / top)
        overlay = cm.inferno(heat)[..., :3]
        ax.imshow(0.55 * image + 0.45 * overlay)
        ax.set_title(titles.get(bag, bag), fontsize=8)
        ax.axis("off")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out


SUREST_CELLS = 4  # cells of the deciding type shown beside a bag's differential


def differential_figure(test: pd.DataFrame, train: pd.DataFrame, cells: pd.DataFrame, paths: dict[str, str],
                        bags: list[str], out: Path, titles: dict[str, str]) -> Path:
    """A row per bag: its share of each cell type (dots) against the range the training bags of each class span
    (bands: 5th to 95th percentile), and beside it its surest cells of the deciding type.

    Args:
        test: the test bags' differential (bag, type, percent).
        train: the training bags' (label, type, percent).
        cells: per bag its surest cells of its deciding type (bag, type, file, x, y, width, height, probability).
        paths: file -> path.
        bags: the bags to draw.
        out: the PNG to write.
        titles: bag -> its row's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    types = sorted(test["type"].unique())
    labels = sorted(train["label"].unique())
    colors = plt.get_cmap("tab10")
    figure = plt.figure(figsize=(4 + 1.3 * SUREST_CELLS, 0.4 + (0.35 * len(types) + 0.6) * len(bags)))
    grid = figure.add_gridspec(len(bags), 1 + SUREST_CELLS, width_ratios=[3] + [1] * SUREST_CELLS)
    bands = train.groupby(["label", "type"])["percent"].quantile([0.05, 0.95]).unstack()
    for row, bag in enumerate(bags):
        ax = figure.add_subplot(grid[row, 0])
        for offset, label in enumerate(labels):
            for y, kind in enumerate(types):
                if (label, kind) in bands.index:
                    low, high = bands.loc[(label, kind)]
                    ax.plot([low, high], [y + 0.15 * (offset - 0.5)] * 2, lw=5, alpha=0.45, color=colors(offset),
                            solid_capstyle="butt", label=f"training {label}" if y == 0 else None)
        mine = test[test["bag"] == bag].set_index("type")["percent"].reindex(types)
        ax.scatter(mine.to_numpy(), range(len(types)), color="black", zorder=3, s=16, label="this bag")
        ax.set_yticks(range(len(types)), types, fontsize=7)
        ax.set_xlabel("share of the bag's cells (%)", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(titles.get(bag, bag), fontsize=7, loc="left")
        if row == 0:
            ax.legend(fontsize=6, loc="center right")
        shown = cells[cells["bag"] == bag].head(SUREST_CELLS)
        for column in range(SUREST_CELLS):
            cell_ax = figure.add_subplot(grid[row, 1 + column])
            cell_ax.axis("off")
            if column < len(shown):
                item = shown.iloc[column]
                cell_ax.imshow(_crop(paths[item["file"]], item))
                cell_ax.set_title(f"{item['type']} {item['probability']:.2f}", fontsize=7)
    figure.suptitle("each bag's differential against the training bags of each class; its surest cells of the type"
                    " that moved the decision most", fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out
