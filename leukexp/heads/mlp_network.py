"""The study's neural heads: a multilayer perceptron on frozen features."""

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
        activation: import path of a `torch.nn` activation class.
    """

    def __init__(self, in_features: int, num_outputs: int, hidden: Sequence[int] = (128,),
                 dropout: float = 0.0, activation: str = "torch.nn.ReLU") -> None:
        layers: list[nn.Module] = []
        width = in_features
        activation_class = activation_module(activation)
        for size in hidden:
            layers += [nn.Linear(width, int(size)), activation_class()]
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = int(size)
        layers.append(nn.Linear(width, num_outputs))
        super().__init__(*layers)


def activation_module(path: str) -> type[nn.Module]:
    """The activation class at `path`; only `torch.nn` modules are accepted (saved heads load safely)."""
    from leukexp.errors import LeukexpError

    if not path.startswith("torch.nn.") or "." in path.removeprefix("torch.nn."):
        raise LeukexpError(f"head.activation={path}: use a torch.nn activation, e.g. torch.nn.ReLU or torch.nn.GELU")
    activation = get_class(path)
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise LeukexpError(f"head.activation={path}: not a torch.nn module")
    return activation
