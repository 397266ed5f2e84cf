"""The steps after a head is fitted, as an ordered list: calibrate, choose the operating point, score the test-time
views, measure the test set, score the external set, write the artifacts (the MLflow model among them).

Each step is one small class with one interface (`PostFitStep`): whether it applies to this run, and what it does
to the run's `Outcome`. A new step is one class and one line in `POST_FIT_STEPS`, as a report section is.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from leukexp.csv_files import write_csv
from leukexp.evaluation.calibration import apply_temperature, brier_score, expected_calibration_error, fit_temperature
from leukexp.evaluation.metrics import best_epoch_metrics, classification_metrics
from leukexp.evaluation.operating import choose, operating_metrics
from leukexp.heads.base import Aggregator
from leukexp.heads.differential import DifferentialHead
from leukexp.inference.attention import attention_panel, attention_table, chosen_bags, field_overlays
from leukexp.inference.tta import view_mean
from leukexp.run.artifacts import prediction_table
from leukexp.run.embeds import EXTERNAL_IMAGES, TEST_VIEWS, Embeds, find
from leukexp.run.external import ExternalScores, score_external
from leukexp.vocabulary import INSTANCE, RAW, TEMPERATURE, TEST, TEST_BRIER, TEST_ECE, THRESHOLD

if TYPE_CHECKING:
    from leukexp.backbones.base import Backbone
    from leukexp.config.plan import RunPlan
    from leukexp.data.fold_data import FoldData
    from leukexp.features.cache import FeatureCache
    from leukexp.features.embed import Features
    from leukexp.run.fit import FitResult


@dataclass
class Outcome:
    """What the steps after fitting read and add to: the fitted result, its metrics and files."""

    plan: RunPlan
    fold_data: FoldData
    backbone: Backbone
    embeds: list[Embeds]
    caches: list[FeatureCache | None]
    result: FitResult
    raw_test_probs: np.ndarray  # the test probabilities before any temperature (test/ece_raw, test/brier_raw)
    features: Features | None = None  # the fold's features per split (instances', with bags)
    metrics: dict[str, float] = field(default_factory=dict)
    external: ExternalScores | None = None
    artifacts: list[Path] = field(default_factory=list)
    shares: pd.DataFrame | None = None  # a differential's: each test bag's share (%) per cell type, `pct_<type>`

    def split_features(self) -> Features:
        """The fold's features per split (kept for the steps that score instances again)."""
        if self.features is None:
            raise ValueError("this step reads the fold's features, which the fit did not keep")
        return self.features

    def aggregator(self) -> Aggregator:
        """The fitted head as the aggregator the bag steps `apply` to."""
        if not isinstance(self.result.head, Aggregator):
            raise ValueError("a bag step ran after a per-image head")
        return self.result.head

    def differential_head(self) -> DifferentialHead:
        """The fitted head as the differential `WriteDifferential` applies to."""
        if not isinstance(self.result.head, DifferentialHead):
            raise ValueError("the differential's step ran after another head")
        return self.result.head

    def has(self, purpose: str) -> bool:
        """Whether the plan derived a set of embeddings for `purpose`."""
        return any(item.purpose == purpose for item in self.embeds)


def scored_views(outcome: Outcome, purpose: str, description: str | None = None) -> tuple[Embeds, np.ndarray]:
    """The set of embeddings for `purpose` (every view of each image, source-major) and the fitted head's
    probabilities of each view: (images, views, classes)."""
    embeds = find(outcome.embeds, purpose)
    features = embeds.features(outcome.backbone, outcome.caches, outcome.plan.features, description)
    probs = outcome.result.head.predict_proba(features)
    return embeds, probs.reshape(-1, embeds.views.n_views, len(outcome.fold_data.classes))


class PostFitStep(ABC):
    """One step after fitting; `phase` names it in the run's per-phase timing."""

    phase: str = "artifacts"

    def applies(self, outcome: Outcome) -> bool:
        """Whether this run takes the step (default: always)."""
        return True

    @abstractmethod
    def run(self, outcome: Outcome) -> None:
        """Do the step, updating `outcome`."""


class Calibrate(PostFitStep):
    """`evaluation.calibration=temperature`: one temperature fitted on the validation predictions (never on test),
    applied to the validation and test probabilities; the saved model and `leukexp-predict` apply it too."""

    phase = "head"

    def applies(self, outcome: Outcome) -> bool:
        """Only with `evaluation.calibration=temperature`."""
        return outcome.plan.evaluation.calibrate

    def run(self, outcome: Outcome) -> None:
        """Fit the temperature, scale val and test."""
        result = outcome.result
        temperature = fit_temperature(outcome.fold_data.labels("val"), result.val_probs)
        outcome.result = dataclasses.replace(result, val_probs=apply_temperature(result.val_probs, temperature),
                                             test_probs=apply_temperature(result.test_probs, temperature),
                                             temperature=temperature)


class ChooseOperatingPoint(PostFitStep):
    """Tasks with a positive class: the threshold for `evaluation.target_sensitivity`, chosen on validation."""

    phase = "head"

    def run(self, outcome: Outcome) -> None:
        """Choose the point (None for a task without a positive class)."""
        fold_data, result = outcome.fold_data, outcome.result
        point = choose(fold_data.classes, fold_data.task.positive_class,
                       fold_data.labels("val"), result.val_probs,
                       outcome.plan.evaluation.target_sensitivity)
        outcome.result = dataclasses.replace(result, operating_point=point)


class ScoreTestViews(PostFitStep):
    """`evaluation.tta`: each test image scored once, from the mean probabilities of its views."""

    phase = "test views"

    def applies(self, outcome: Outcome) -> bool:
        """Only when the plan derived test-time views."""
        return outcome.has(TEST_VIEWS)

    def run(self, outcome: Outcome) -> None:
        """Embed the views, score them, keep one test sample per source image."""
        embeds, probs = scored_views(outcome, TEST_VIEWS, f"test views ({outcome.plan.evaluation.tta})")
        fold_data, result = outcome.fold_data, outcome.result
        originals = embeds.samples[embeds.samples["view"] == 0].reset_index(drop=True)
        outcome.fold_data = dataclasses.replace(fold_data, samples=dataclasses.replace(fold_data.samples,
                                                                                       test=originals))
        outcome.raw_test_probs = view_mean(probs)
        outcome.result = dataclasses.replace(result, test_probs=view_mean(probs, result.temperature))


class MeasureTestSet(PostFitStep):
    """The test metrics: classification measures, raw and calibrated ECE and Brier, the operating point's measures,
    the best epoch's values."""

    def run(self, outcome: Outcome) -> None:
        """Compute every test metric."""
        fold_data, result = outcome.fold_data, outcome.result
        labels = fold_data.labels("test")
        metrics = classification_metrics(labels, result.test_probs, fold_data.classes)
        if outcome.plan.evaluation.calibrate:  # raw and calibrated, for a sweep to compare
            metrics |= {TEMPERATURE: result.temperature,
                        TEST_ECE + RAW: expected_calibration_error(labels, outcome.raw_test_probs),
                        TEST_BRIER + RAW: brier_score(labels, outcome.raw_test_probs)}
        if result.operating_point is not None:
            metrics |= operating_metrics(result.operating_point, fold_data.classes, labels, result.test_probs, TEST)
            metrics[THRESHOLD] = result.operating_point.threshold
        outcome.metrics |= metrics | best_epoch_metrics(result.history, result.best_epoch)


class ScoreExternal(PostFitStep):
    """`evaluation.external`: the fold's model scores another lab's images (`external/<metric>`)."""

    phase = "external"

    def applies(self, outcome: Outcome) -> bool:
        """Only when the plan has an external set."""
        return outcome.has(EXTERNAL_IMAGES)

    def run(self, outcome: Outcome) -> None:
        """Embed and score the external images."""
        embeds, probs = scored_views(outcome, EXTERNAL_IMAGES)
        outcome.external = score_external(embeds.catalog, outcome.fold_data.classes, outcome.result, probs)
        outcome.metrics |= outcome.external.metrics


class WriteArtifacts(PostFitStep):
    """The run folder's files: config, manifest, predictions, history, figures, the MLflow model, activation maps."""

    def run(self, outcome: Outcome) -> None:
        """Write them."""
        from leukexp.run.artifacts import write_run_artifacts

        plan = outcome.plan
        outcome.artifacts += write_run_artifacts(
            plan.paths.output_dir, plan.config_yaml(), outcome.fold_data, outcome.backbone, plan.model.values(),
            outcome.result, outcome.metrics, plan.evaluation.cam_images,
            outcome.external.predictions if outcome.external is not None else None, plan.seed, outcome.shares)


class ExplainBags(PostFitStep):
    """Bags: every test instance's weight (`attention.csv`), the most and least attended instances of chosen test
    bags (`attention/panel.png`), tiled fields with their tiles' attention (`attention/fields.png`), and where the
    instances carry their own labels, how well the weights find the witnesses (`instance/witness_auc`: AUROC of
    the weights of positive-class instances against the others, inside positive test bags)."""

    def applies(self, outcome: Outcome) -> bool:
        """Only with bags and an aggregator that weighs its instances."""
        return outcome.fold_data.bags is not None and isinstance(outcome.result.head, Aggregator)

    def run(self, outcome: Outcome) -> None:
        """Weights, table, metrics, pictures."""
        from leukexp.run.artifacts import optional
        from leukexp.vocabulary import ATTENTION_DIR, ATTENTION_FILE

        fold_data, out = outcome.fold_data, outcome.plan.paths.output_dir
        weights = outcome.aggregator().attention(outcome.split_features().test, fold_data.offsets("test"))
        table = attention_table(fold_data.samples.test, fold_data.catalog.frame, fold_data.bag_names("test"),
                                weights, fold_data.instance_views)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(table, out / ATTENTION_FILE)
        outcome.artifacts.append(out / ATTENTION_FILE)
        outcome.metrics |= witness_metrics(table, fold_data)
        predictions = prediction_table(fold_data, outcome.result).to_frame()
        bags = chosen_bags(predictions)
        paths = dict(zip(fold_data.catalog.frame["file"], fold_data.catalog.frame["path"], strict=True))
        titles = {row["file"]: f"{row['file']}\n{row['label']} -> {row['predicted']}"
                  for _, row in predictions.iterrows()}
        redo = "The weights are in attention.csv; the run goes on without the picture."
        drawn = []
        for name, draw, wanted in (("panel.png", attention_panel, True),
                                   ("fields.png", field_overlays, table["x"].notna().any())):
            if wanted and bags:
                drawn.append(optional(f"{ATTENTION_DIR}/{name}", redo, functools.partial(
                    draw, table, paths, bags, out / ATTENTION_DIR / name, titles)))
        if any(path is not None for path in drawn):
            outcome.artifacts.append(out / ATTENTION_DIR)  # logged as a folder, as the activation maps are


class WriteDifferential(PostFitStep):
    """`head=differential`: each test bag's differential (`differential.csv`: per type the cells most likely that
    type, their share and the mean probability, in %), each type's share as a column of `predictions.csv`, and with
    a linear bag classifier of two classes the odds ratio per +1 % of each type (`odds_ratios.csv`, bootstrap CI
    over the training bags)."""

    def applies(self, outcome: Outcome) -> bool:
        """Only with bags and a head that describes them by cell types."""
        return outcome.fold_data.bags is not None and isinstance(outcome.result.head, DifferentialHead)

    def run(self, outcome: Outcome) -> None:
        """Write the table; keep the shares for `predictions.csv` (`WriteArtifacts`)."""
        from leukexp.run.artifacts import optional
        from leukexp.vocabulary import DIFFERENTIAL_FIGURE, DIFFERENTIAL_FILE, ODDS_RATIOS_FILE, SHARE_PREFIX

        fold_data, out = outcome.fold_data, outcome.plan.paths.output_dir
        head, features = outcome.differential_head(), outcome.split_features()
        table = head.differential(features.test, fold_data.offsets("test"))
        predictions = prediction_table(fold_data, outcome.result).to_frame()
        bags = predictions[["file", "label", "predicted"]].rename(columns={"file": "bag"})
        table = bags.iloc[table.pop("bag_index").to_numpy()].reset_index(drop=True).join(table)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(table, out / DIFFERENTIAL_FILE)
        outcome.artifacts.append(out / DIFFERENTIAL_FILE)
        outcome.shares = table.pivot(index="bag", columns="type", values="percent").add_prefix(SHARE_PREFIX)
        classes = fold_data.classes
        positive = fold_data.task.positive_class or classes[0]
        ratios = head.odds_ratios(features.training(), fold_data.bag_offsets("train"),
                                                 fold_data.labels("train"), classes.index(positive),
                                                 seed=outcome.plan.seed)
        if ratios is not None:  # a linear bag classifier of two classes: which types drive the diagnosis
            ratios.insert(1, "odds_of", positive)
            write_csv(ratios, out / ODDS_RATIOS_FILE)
            outcome.artifacts.append(out / ODDS_RATIOS_FILE)
        figure = optional(DIFFERENTIAL_FIGURE, "The counts are in differential.csv; the run goes on without the"
                          " picture.", lambda: self.draw(outcome, table, predictions, out / DIFFERENTIAL_FIGURE))
        if figure is not None:
            outcome.artifacts.append(figure)

    @staticmethod
    def draw(outcome: Outcome, table: pd.DataFrame, predictions: pd.DataFrame, path: Path) -> Path:
        """`differential.png`: the surest right and wrong test bags' differentials against the training bags' of
        each class, and each one's surest cells of the type that moved its decision most."""
        from leukexp.inference.attention import differential_figure

        fold_data, head, features = outcome.fold_data, outcome.differential_head(), outcome.split_features()
        train = head.differential(features.training(), fold_data.bag_offsets("train"))
        train["label"] = np.asarray(fold_data.classes)[fold_data.labels("train")][train["bag_index"].to_numpy()]
        test = fold_data.samples.test
        names = fold_data.bag_names("test")
        unusual = head.unusual_types(features.test, fold_data.offsets("test"))  # the attention's type, per bag
        wanted = unusual[test["unit"].to_numpy()]
        probs = head.type_proba(features.test)
        cells = attention_table(test, fold_data.catalog.frame, names, probs[np.arange(len(test)), wanted],
                                fold_data.instance_views).rename(columns={"weight": "probability"})
        cells["type"] = cells["bag"].map(dict(zip(names, np.asarray(head.types)[unusual], strict=True)))
        paths = dict(zip(fold_data.catalog.frame["file"], fold_data.catalog.frame["path"], strict=True))
        titles = {row["file"]: f"{row['file']}: {row['label']} -> {row['predicted']}"
                  for _, row in predictions.iterrows()}
        return differential_figure(table, train, cells, paths, chosen_bags(predictions, 4), path, titles)


def witness_metrics(table: pd.DataFrame, fold_data: FoldData) -> dict[str, float]:
    """`instance/witness_auc` and `instance/witness_share` where instances carry their own labels and the task has a
    positive class; nothing otherwise."""
    from sklearn.metrics import roc_auc_score

    positive = fold_data.task.positive_class
    if positive is None or not (table["instance_label"] != "").any():
        return {}
    bag_labels = dict(zip(fold_data.bag_names("test"), np.asarray(fold_data.classes)[fold_data.labels("test")],
                          strict=True))
    inside = table[table["bag"].map(bag_labels) == positive]
    witness = (inside["instance_label"] == positive).to_numpy()
    metrics = {f"{INSTANCE}witness_share": float(witness.mean()) if len(witness) else float("nan")}
    if 0 < witness.sum() < len(witness):
        metrics[f"{INSTANCE}witness_auc"] = float(roc_auc_score(witness, inside["weight"].to_numpy()))
    return metrics


# the order matters: the operating point is chosen on calibrated probabilities, test views use the temperature,
# the metrics read the final test probabilities, the artifacts everything (the differential's shares too)
POST_FIT_STEPS: tuple[PostFitStep, ...] = (Calibrate(), ChooseOperatingPoint(), ScoreTestViews(), MeasureTestSet(),
                                           ScoreExternal(), WriteDifferential(), WriteArtifacts(), ExplainBags())
