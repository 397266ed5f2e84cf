"""Figures are real PNGs of the expected size."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from leukexp.evaluation.plots import bar_chart, contact_sheet, grouped_bars, plot_confusion, plot_curves, plot_roc
from leukexp.vocabulary import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS


def png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not an image"
    return image


def test_every_figure_is_written(tmp_path: Path) -> None:
    matrix = pd.DataFrame([[5, 1], [0, 4]], index=["ALL", "HLT"], columns=["ALL", "HLT"])
    labels, probs = np.array([0, 0, 1, 1]), np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    history = pd.DataFrame({"epoch": [0, 1], TRAIN_ACC: [0.5, 0.7], VAL_ACC: [0.6, 0.8],
                            TRAIN_LOSS: [1.0, 0.6], VAL_LOSS: [0.9, 0.7]})
    figures = [plot_confusion(matrix, tmp_path / "cm.png"), plot_roc([("f0", labels, probs)], ["ALL", "HLT"],
                                                                     tmp_path / "roc.png"),
               plot_curves(history, tmp_path / "curves.png", 1),
               bar_chart(["a", "b"], [0.8, 0.9], [0.7, 0.85], [0.9, 0.95], tmp_path / "bars.png", "acc"),
               grouped_bars(pd.DataFrame({"a": [0.8, 0.7]}, index=["ALL", "HLT"]), tmp_path / "grouped.png", "f1"),
               contact_sheet([np.zeros((8, 8, 3), np.uint8)] * 3, ["x", "y", "z"], tmp_path / "sheet.png", columns=3)]
    shapes = {path.name: png(path).shape for path in figures}
    assert shapes["curves.png"][1] > shapes["curves.png"][0], "two panels side by side"
    assert shapes["sheet.png"][1] > shapes["sheet.png"][0], "three images in a row"
    assert min(s[0] for s in shapes.values()) >= 100
