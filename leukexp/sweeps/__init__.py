"""Multiruns: per-job set-up and bookkeeping of Hydra sweeps, and the fold-aware hyper-parameter search."""
