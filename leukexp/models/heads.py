"""Neural classifier heads trained on frozen backbone features."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class
from torch import nn


class MLPHead(nn.Sequential):
    """features -> hidden layers (activation, optional dropout) -> outputs.

    Args:
        in_features: backbone feature width.
        num_outputs: logits (classes, or 1 for a binary task with one logit).
        hidden: hidden layer widths, e.g. `[128]` or `[1024, 512, 128]`.
        dropout: dropout rate after each hidden activation (0 for none).
        activation: import path of the activation module class.
    """

    def __init__(self, in_features: int, num_outputs: int, hidden: Sequence[int] = (128,),
                 dropout: float = 0.0, activation: str = "torch.nn.ReLU") -> None:
        layers: list[nn.Module] = []
        width = in_features
        activation_class = get_class(activation)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), activation_class()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = int(size)
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)
