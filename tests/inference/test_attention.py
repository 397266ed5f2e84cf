"""What decided a bag: the attention table, the chosen bags and the pictures."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from leukexp.data.augment import OfflineViews
from leukexp.data.tiles import GRID_COLUMNS, TileViews, Tiling
from leukexp.inference.attention import attention_panel, attention_table, chosen_bags, field_overlays


def test_the_table_ranks_instances_within_each_bag_and_boxes_tiles() -> None:
    instances = pd.DataFrame({"unit": [0, 0, 1], "source": [0, 0, 1], "tile": [0, GRID_COLUMNS, 1],
                              "instance_label": ["ALL", "HLT", ""]})
    catalog = pd.DataFrame({"file": ["a.png", "b.png"]})
    views = TileViews(Tiling(32, 32), OfflineViews(repeats=0))
    table = attention_table(instances, catalog, np.array(["p1", "p2"]), np.array([0.2, 0.8, 1.0]), views)
    assert list(table["bag"]) == ["p1", "p1", "p2"] and list(table["rank"]) == [1, 2, 1]
    assert table.iloc[0][["x", "y", "width"]].tolist() == [0, 32, 32] and table.iloc[0]["weight"] == 0.8


def test_the_surest_right_and_wrong_bag_of_each_class_are_drawn() -> None:
    predictions = pd.DataFrame({"file": ["a", "b", "c", "d"], "label": ["ALL", "ALL", "HLT", "HLT"],
                                "predicted": ["ALL", "HLT", "HLT", "HLT"], "p_ALL": [0.9, 0.4, 0.2, 0.45],
                                "p_HLT": [0.1, 0.6, 0.8, 0.55]})
    assert chosen_bags(predictions) == ["a", "b", "c"]


def test_the_pictures_are_drawn(tmp_path: Path) -> None:
    image = tmp_path / "field.png"
    cv2.imwrite(str(image), np.full((64, 64, 3), 200, np.uint8))
    table = pd.DataFrame({"bag": ["f"] * 4, "file": ["field.png"] * 4, "x": [0, 32, 0, 32], "y": [0, 0, 32, 32],
                          "width": [32] * 4, "height": [32] * 4, "instance_label": [""] * 4,
                          "weight": [0.4, 0.3, 0.2, 0.1], "rank": [1, 2, 3, 4]})
    paths = {"field.png": str(image)}
    panel = attention_panel(table, paths, ["f"], tmp_path / "panel.png", {"f": "f\nALL -> ALL"})
    fields = field_overlays(table, paths, ["f"], tmp_path / "fields.png", {})
    assert cv2.imread(str(panel)).shape[0] > 50 and cv2.imread(str(fields)).shape[1] > 100
