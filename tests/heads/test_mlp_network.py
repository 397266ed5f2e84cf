"""The study's MLP network: widths, dropout and activation from config; only torch.nn activations."""

import pytest
import torch
from torch import nn

from leukexp.errors import LeukexpError
from leukexp.heads.mlp_network import MLPHead


def layers(head: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in head.modules() if isinstance(m, kind)]


@pytest.mark.parametrize(("hidden", "dropout", "widths", "dropouts"), [
    ([128], 0.0, [128, 5], 0), ([1024, 512, 128], 0.0, [1024, 512, 128, 5], 0), ([1024, 512, 128], 0.5,
                                                                                 [1024, 512, 128, 5], 3)])
def test_widths_and_dropout(hidden: list[int], dropout: float, widths: list[int], dropouts: int) -> None:
    head = MLPHead(64, 5, hidden, dropout)
    assert [layer.out_features for layer in layers(head, nn.Linear)] == widths
    assert [m.p for m in layers(head, nn.Dropout)] == [dropout] * dropouts
    assert head(torch.randn(3, 64)).shape == (3, 5)


def test_activation_is_a_torch_nn_class_only() -> None:
    assert layers(MLPHead(4, 2, [8], activation="torch.nn.GELU"), nn.GELU)
    for bad in ("os.system", "torch.nn.functional.relu", "builtins.eval"):
        with pytest.raises(LeukexpError, match=r"head\.activation"):
            MLPHead(4, 2, [8], activation=bad)
