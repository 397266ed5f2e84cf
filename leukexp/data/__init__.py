"""Data layer: image sources, tasks, splits, protocols and augmentation."""
