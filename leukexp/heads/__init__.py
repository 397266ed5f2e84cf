"""Classifier heads on frozen features: the `Head` interface, its torch and scikit-learn adapters (`head` group).

The names configs build heads from (`_target_: leukexp.heads.mlp`) are these, wherever their code lives.
"""

from leukexp.exports import lazy_exports

__all__ = ["Head", "HeadContext", "bag_network", "differential_head", "estimator_head", "knn", "mlp", "svm", "vote"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Head": "base", "HeadContext": "base", "mlp": "torch_head", "svm": "sklearn_head", "knn": "sklearn_head",
    "estimator_head": "sklearn_head:sklearn_head", "bag_network": "mil", "vote": "mil",
    "differential_head": "differential:differential"})
