"""Backbone feature extraction and its on-disk cache."""
