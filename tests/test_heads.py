"""Heads: MLP shapes from config, the SVM's probabilities."""

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from leukexp.models.svm import SVMHead


def layers(head: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in head.modules() if isinstance(m, kind)]


def test_head_configs_build_the_studys_heads(compose_cfg) -> None:
    shapes = {}
    for name in ("mlp1", "mlp3", "mlp3_dropout"):
        head = instantiate(compose_cfg(f"head={name}").head)(in_features=64, num_outputs=5)
        shapes[name] = [layer.out_features for layer in layers(head, nn.Linear)]
        assert head(torch.randn(3, 64)).shape == (3, 5)
        assert len(layers(head, nn.Dropout)) == (3 if name == "mlp3_dropout" else 0)
    assert shapes == {"mlp1": [128, 5], "mlp3": [1024, 512, 128, 5], "mlp3_dropout": [1024, 512, 128, 5]}
    dropout = instantiate(compose_cfg("head=mlp3_dropout").head)(in_features=8, num_outputs=2)
    assert all(m.p == 0.5 for m in layers(dropout, nn.Dropout))


def test_activation_is_config(compose_cfg) -> None:
    head = instantiate(compose_cfg("head=mlp1", "head.activation=torch.nn.GELU").head)(in_features=4, num_outputs=2)
    assert layers(head, nn.GELU)


def test_svm_gives_calibrated_probabilities() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(2, 1, (40, 6)), rng.normal(-2, 1, (40, 6))])
    y = np.repeat([0, 1, 2], 40)
    head = SVMHead(in_features=6, num_outputs=3).fit(x, y)
    probs = head.predict_proba(x)
    assert probs.shape == (120, 3)
    assert np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == y).mean() > 0.85
