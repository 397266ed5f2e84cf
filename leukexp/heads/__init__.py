"""Classifier heads on frozen features: the `Head` interface, its torch and scikit-learn adapters (`head` group)."""
