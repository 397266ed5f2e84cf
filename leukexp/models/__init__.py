"""Models: frozen timm backbones and the heads trained on their features."""
