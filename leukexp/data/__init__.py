"""Data layer: image sources, tasks, splits, protocols, bags, stain normalization and augmentation.

The names configs build from (`_target_: leukexp.data.FolderSource`) are these, wherever their code lives.
"""

from leukexp.exports import lazy_exports

__all__ = ["FoldSpec", "FolderSource", "ImageBags", "Macenko", "NoBags", "NoStain", "OfflineViews", "OnlineAugment",
           "Protocol", "Reinhard", "SyntheticAtlas", "SyntheticFields", "SyntheticPatients", "SyntheticSource", "Task",
           "TileBags"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "FolderSource": "sources", "SyntheticSource": "synthetic", "SyntheticAtlas": "synthetic_bags",
    "SyntheticFields": "synthetic_bags", "SyntheticPatients": "synthetic_bags", "Task": "tasks",
    "FoldSpec": "splits", "Protocol": "protocol", "OfflineViews": "augment", "OnlineAugment": "augment",
    "NoStain": "stain", "Reinhard": "stain", "Macenko": "stain", "NoBags": "bags", "ImageBags": "bags",
    "TileBags": "tiles"})
