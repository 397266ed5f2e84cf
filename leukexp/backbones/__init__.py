"""Frozen feature extractors: the `Backbone` interface and its timm and Keras implementations (`model` group)."""
