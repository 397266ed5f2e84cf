"""Bare loops: what a warm fold's head, aggregator or differential costs done by hand on the same cached features."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import torch
from leukexp.backbones.base import Backbone
from leukexp.config.plan import RunPlan


def fold_features(plan: RunPlan, backbone: Backbone) -> tuple[Any, np.ndarray]:
    """The plan's fold data and its samples' features (train, val, test rows in order), from the store."""
    from leukexp.data.fold_data import build_fold_data
    from leukexp.run.embeds import SPLITS, caches_for, find, fold_embeds

    fold_data = build_fold_data(plan)
    every = find(fold_embeds(plan, fold_data), SPLITS).features(backbone, caches_for(plan, backbone, fold_data.stain),
                                                                plan.features)
    return fold_data, every


def measure_head_loop(plan: RunPlan, backbone: Backbone) -> dict[str, float]:
    """The limit of a warm run: a bare torch loop of the default head's steps (features -> 128 -> classes, Adam,
    the run's batch size and epochs, one validation pass per epoch, one thread as the run gives a small head) on the
    run's own cached features, read from the store first (not timed)."""
    from torch import nn

    fold_data, every = fold_features(plan, backbone)
    samples = fold_data.samples
    train_x = torch.from_numpy(every[:len(samples.train)])
    train_y = torch.from_numpy(samples.train["label_index"].to_numpy())
    val_x = torch.from_numpy(every[len(samples.train):len(samples.train) + len(samples.val)])
    epochs, batch = int(plan.trainer.get("max_epochs")), plan.training.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(train_x.shape[1], 128), nn.ReLU(), nn.Linear(128, len(fold_data.classes)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(train_x)).split(batch):
            optimizer.zero_grad()
            loss_fn(model(train_x[index]), train_y[index]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            model(val_x).softmax(1)
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return {"seconds": seconds, "steps": epochs * -(-len(train_x) // batch), "epochs": epochs}


def measure_bag_loop(plan: RunPlan, backbone: Backbone) -> dict[str, float]:
    """The limit of a warm aggregator fold: a bare torch loop of `head=abmil`'s steps (the same gated attention
    network, bags padded once, the run's bags per step and epochs, one validation pass per epoch, one thread) over
    the fold's own bags, their instances' features read from the store first (not timed)."""
    from leukexp.heads.mil import BagNetwork, pad_bags

    fold_data, every = fold_features(plan, backbone)
    n_train, n_val = len(fold_data.samples.train), len(fold_data.samples.val)
    train_x = pad_bags(every[:n_train], fold_data.offsets("train"))
    val_x = pad_bags(every[n_train:n_train + n_val], fold_data.offsets("val"))
    train_y = torch.as_tensor(fold_data.labels("train")).float()
    epochs, batch = int(plan.trainer.get("max_epochs")), plan.training.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = BagNetwork(every.shape[1], 1)
    network.standardize_to(every[:n_train])
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    for _ in range(epochs):
        network.train()
        for index in torch.randperm(len(train_x)).split(batch):
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(network(train_x[index]).squeeze(-1),
                                                                 train_y[index]).backward()
            optimizer.step()
        network.eval()
        with torch.no_grad():
            network(val_x)
    seconds = time.perf_counter() - start
    torch.set_num_threads(threads)
    return {"seconds": seconds, "steps": epochs * -(-len(train_x) // batch), "epochs": epochs}


def measure_differential_loop(plan: RunPlan, backbone: Backbone, repeats: int = 5) -> dict[str, float]:
    """The limit of a warm differential fold's fitting: its steps done bare with scikit-learn (a scaled logistic
    regression on the training bags' typed cells, every cell's type probabilities, each bag's mean, a scaled logistic
    regression on the training bags' means, val and test bags scored) on the fold's own cached features; the median of
    `repeats` timings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fold_data, every = fold_features(plan, backbone)
    sizes = [len(fold_data.samples.train), len(fold_data.samples.val), len(fold_data.samples.test)]
    parts = np.split(every, np.cumsum(sizes)[:2])
    offsets = [fold_data.offsets(name) for name in ("train", "val", "test")]
    types = fold_data.instance_types("train")
    labelled = types != ""
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        cells = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        cells.fit(parts[0][labelled], types[labelled].astype(str))
        means = [np.add.reduceat(cells.predict_proba(x), o[:-1], axis=0) / np.diff(o)[:, None]
                 for x, o in zip(parts, offsets, strict=True)]
        bag = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        bag.fit(means[0], fold_data.labels("train"))
        bag.predict_proba(means[1])
        bag.predict_proba(means[2])
        timings.append(time.perf_counter() - start)
    return {"seconds": float(np.median(timings)), "cells": int(labelled.sum()), "bags": len(offsets[0]) - 1}
