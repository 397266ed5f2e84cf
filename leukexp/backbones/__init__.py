"""Frozen feature extractors: the `Backbone` interface and its timm and Keras implementations (`model` group).

The names configs and saved models build backbones from (`_target_: leukexp.backbones.TimmBackbone`) are these,
wherever their code lives.
"""

from leukexp.exports import lazy_exports

__all__ = ["Backbone", "ConcatBackbone", "KerasBackbone", "TimmBackbone"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Backbone": "base", "TimmBackbone": "timm_backbone", "KerasBackbone": "keras_backbone",
    "ConcatBackbone": "concat"})
