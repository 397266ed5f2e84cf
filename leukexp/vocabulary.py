"""The run vocabulary: names that the writer of a run and its readers (cv, report, predict) share.

Tag keys, run kinds, metric prefixes, the config groups that identify a configuration, artifact names
and the `predictions.csv` schema live here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

# config groups whose choice never changes what a run computes: every other group of `conf/` identifies a
# configuration (`config.identity.identity_groups`); the fold does not: its runs form one CV group
NON_IDENTITY_GROUPS = ("fold", "experiment", "paths", "hydra")
# run names: what varies, most telling first (`senet154 svm`; its fold runs `senet154 svm · f0`)
NAME_ORDER = ("model", "head", "task", "data", "augmentation", "stain", "protocol")
RUN_NAME_SEPARATOR = " "
FOLD_NAME_SEPARATOR = " · "
# short forms of long option names, values and keys in run names (`lite0 avgstd`, `drop=0.5`): the UI's name
# column shows about 20 characters; any other option or value is shown as it is (leading `tf_`/`efficientnet_`
# dropped)
SHORT_FORMS = {"inception_v3": "incv3", "keras_inception_v3": "keras-incv3", "resnext101_32x8d": "rx101",
               "seresnext50_32x4d": "serx50", "malignant_vs_benign": "mal-benign", "stain_jitter": "jitter",
               "stain_jitter_online": "jitter-online", "mlp3_dropout": "mlp3-drop", "synthetic_fields": "fields",
               "synthetic_patients": "patients", "synthetic_b": "synth-b", "synthetic": "synth", "dropout": "drop",
               "max_epochs": "ep", "batch_size": "bs", "val_fraction": "val", "n_splits": "k", "weight_decay": "wd",
               "center_crop": "crop", "early_stopping_patience": "patience"}
SHORT_PREFIXES = ("tf_", "efficientnet_")
# set by a sweep for its jobs: the keys it varies (comma-separated), which its run names lead with
SWEPT_KEYS_ENV = "LEUKEXP_SWEPT_KEYS"

# tags
KIND_TAG = "leukexp.kind"
NAME_TAG = "leukexp.name"
RESULT_TAG = "leukexp.result"
NOTE_CONTENT = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
KIND_FOLD = "fold"
KIND_CV = "cv"
KIND_SEARCH = "search"
# a search (hydra/sweeper=optuna): its study, the trial a run belongs to, the trial's state, the search run, the
# study's journal file
SEARCH_TAG = "leukexp.search"
TRIAL_TAG = "leukexp.trial"
TRIAL_STATE_TAG = "leukexp.trial_state"
SEARCH_RUN_TAG = "leukexp.search_run"
SEARCH_STORAGE_TAG = "leukexp.search_storage"
NOTE_TAG = "leukexp.note"
OWNER_TAG = "leukexp.owner"
STUDY_TAG = "leukexp.study"
PARENT_TAG = "mlflow.parentRunId"
# a registered model version's tags: its CV parent, the metric it was selected on and why this fold
REGISTRY_PARENT_TAG = "leukexp.cv_parent"
REGISTRY_METRIC_TAG = "leukexp.metric"
REGISTRY_SELECTION_TAG = "leukexp.selection"
# and its data: the fold run's dataset input (with the data hash, `DATA_HASH_TAG`)
DATASET_NAME_TAG, DATASET_DIGEST_TAG, DATASET_SOURCE_TAG = "leukexp.dataset", "leukexp.dataset_digest", (
    "leukexp.dataset_source")
# the alias `leukexp-report --register` moves to the version it registers (`models:/NAME@champion`)
CHAMPION_ALIAS = "champion"
# a fold run's data as an MLflow dataset input (the UI's Datasets column): MLflow's context tag and leukexp's value
DATASET_CONTEXT_TAG = "mlflow.data.context"
TRAINING_CONTEXT = "training"
CV_GROUP_TAG = "cv_group"
DATA_HASH_TAG = "data_hash"
FOLD_TAG = "fold"
N_SPLITS_TAG = "n_splits"
FOLDS_FINISHED_TAG = "folds_finished"
# the task's class names as written (JSON: MLflow key part -> name), since metric keys carry `metric_key_part`s
CLASSES_TAG = "leukexp.classes"
# a pending upload's identity (leukexp-sync logs a folder, or a copy of it, once)
UPLOAD_TAG = "leukexp.upload_id"
# a run or registered version copied from another store (`leukexp-sync --from`): where from, and whether complete
MOVED_FROM_TAG, MOVE_STATE_TAG = "leukexp.moved_from", "leukexp.move_state"
# tags that describe a configuration: shown in reports, copied from a fold run to its CV parent
MODEL_TAG, HEAD_TAG, TASK_TAG, PROTOCOL_TAG, AUGMENTATION_TAG, DATA_TAG = (
    "model", "head", "task", "protocol", "augmentation", "data")
LABEL_TAGS = (MODEL_TAG, HEAD_TAG, TASK_TAG, PROTOCOL_TAG, AUGMENTATION_TAG, DATA_TAG)
SEED_TAG = "seed"
GIT_COMMIT_TAG = "git_commit"
TTA_TAG = "tta"
CV_TAGS = (*LABEL_TAGS, SEED_TAG, CV_GROUP_TAG, DATA_HASH_TAG, NAME_TAG, SEARCH_TAG, TRIAL_TAG)

# metric prefixes
TEST = "test/"
# metrics of the external validation set (`evaluation.external`): the test metrics' names under this stage
EXTERNAL = "external/"
BEST = "best/"
# bags: measures of the instances inside the bags (where the data gives instances their own labels)
INSTANCE = "instance/"
CV = "cv/"
# metric names: a stage and a measure (`test/acc`, `val/loss`), per class `test/f1/<class>`; `best/` + a history
# metric is its value at the selected epoch, `cv/` + a fold metric + `_mean` (`_std`, ...) a CV parent's aggregate
ACC, LOSS, COUNT = "acc", "loss", "n"
PRECISION, RECALL, F1, AUC = "precision", "recall", "f1", "auc"
MACRO = "_macro"
# calibration: top-label expected calibration error and Brier score; `_raw` before temperature scaling
ECE, BRIER, RAW = "ece", "brier", "_raw"
# agreement beyond accuracy (every task), and a screening decision's measures at its operating point
BALANCED_ACC, KAPPA, MCC = "balanced_acc", "kappa", "mcc"
OPERATING_MEASURES = ("sensitivity", "specificity", "ppv", "npv")
CI_LOW, CI_HIGH = "_ci95_low", "_ci95_high"


def metric_name(stage: str, measure: str) -> str:
    """`test/acc` from `test` and `acc`."""
    return f"{stage.rstrip('/')}/{measure}"


TRAIN_LOSS, TRAIN_ACC = metric_name("train", LOSS), metric_name("train", ACC)
VAL_LOSS, VAL_ACC = metric_name("val", LOSS), metric_name("val", ACC)
TEST_ACC, TEST_LOSS, TEST_COUNT = metric_name(TEST, ACC), metric_name(TEST, LOSS), metric_name(TEST, COUNT)
TEST_F1_MACRO, TEST_AUC_MACRO = metric_name(TEST, F1 + MACRO), metric_name(TEST, AUC + MACRO)
TEST_ECE, TEST_BRIER = metric_name(TEST, ECE), metric_name(TEST, BRIER)
# the temperature fitted on validation (`evaluation.calibration=temperature`)
TEMPERATURE = metric_name("calibration", "temperature")
# the probability of the positive class chosen on validation for `evaluation.target_sensitivity`
THRESHOLD = metric_name("operating", "threshold")
# a head's per-epoch history (`Head.fit`, `history.csv`): the epoch, then any of these metrics
EPOCH = "epoch"
HISTORY_METRICS = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC)
# what selects a head's best epoch, and the search's default objective (its CV mean)
SELECTION_METRIC = VAL_ACC
BEST_EPOCH = f"{BEST}{EPOCH}"

# what a fold run can log: stages, their measures (also `<measure>_raw`, `<measure>_ci95_low/_high`), per-class ones
FOLD_STAGES = ("train", "val", "test", "external", "instance")
STAGE_MEASURES = (ACC, LOSS, COUNT, ECE, BRIER, BALANCED_ACC, KAPPA, MCC, PRECISION + MACRO, RECALL + MACRO,
                  F1 + MACRO, AUC + MACRO, *OPERATING_MEASURES)
CLASS_MEASURES = (PRECISION, RECALL, F1, AUC)


def is_fold_metric(name: str) -> bool:
    """Whether a fold run can log `name` (`test/acc`, `best/val/acc`, `external/f1/ALL`, `test/ece_raw`...): what
    a search's objective or a report's metric may name."""
    if name in (TEMPERATURE, THRESHOLD, BEST_EPOCH) or name.removeprefix(BEST) in HISTORY_METRICS:
        return True
    stage, _, measure = name.partition("/")
    if stage not in FOLD_STAGES or not measure:
        return False
    head, _, rest = measure.partition("/")
    if rest:
        return head in CLASS_MEASURES
    for suffix in (RAW, CI_LOW, CI_HIGH):
        measure = measure.removesuffix(suffix)
    return measure in STAGE_MEASURES


# MLflow allows letters, digits, `_ - . / :` and spaces in metric and param keys (no colon on Windows); a class folder
# may be called `Band (BNE)+`. One rule maps any name to a key part; the original names travel in CLASSES_TAG.
_KEY_UNSAFE = re.compile(r"[^\w.\- ]")


def metric_key_part(name: str) -> str:
    """`name` as one part of an MLflow key: every character MLflow refuses becomes `_` (`Band (BNE)+` ->
    `Band _BNE__`); names that would form a path step (`.`, `..`, empty) get a leading `_`."""
    part = _KEY_UNSAFE.sub("_", str(name)).strip()
    return part if part.strip(".") else f"_{part}"


def class_key_parts(classes: list[str]) -> list[str]:
    """`metric_key_part` of each class, made unique (`a+` and `a$` become `a_` and `a__2`)."""
    parts: list[str] = []
    for name in classes:
        part, n = metric_key_part(name), 1
        while part in parts:
            n += 1
            part = f"{metric_key_part(name)}_{n}"
        parts.append(part)
    return parts


def mlflow_key(key: str) -> str:
    """A param or metric key MLflow accepts: each `/`- or `.`-separated part passed through `metric_key_part`."""
    return "/".join(".".join(metric_key_part(p) if _KEY_UNSAFE.search(p) or not p.strip(".") else p
                             for p in step.split(".")) for step in key.split("/"))

# artifacts of a fold run
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.csv"
PREDICTIONS_FILE = "predictions.csv"
# the run param that names a run's patients (its data.groups_csv): reports resample patients when it is set
GROUPS_PARAM = "data.groups_csv"
# the external validation set's predictions (one row per image, the predictions.csv schema)
EXTERNAL_PREDICTIONS_FILE = "external_predictions.csv"
HISTORY_FILE = "history.csv"
# bags: every test instance's weight in its bag's prediction, and the pictures of what decided
ATTENTION_FILE = "attention.csv"
ATTENTION_DIR = "attention"
# head=differential: each test bag's differential (bag, label, predicted, type, count, percent, soft_percent), and the
# column prefix of each type's share (%) in predictions.csv, leukexp-predict's table and the served model's output
DIFFERENTIAL_FILE = "differential.csv"
DIFFERENTIAL_FIGURE = "differential.png"
SHARE_PREFIX = "pct_"
# a differential run's: per cell type, the odds ratio of the positive class per +1 % of its share, with a bootstrap CI
ODDS_RATIOS_FILE = "odds_ratios.csv"
CONFUSION_FILE = "confusion_matrix.csv"
RELIABILITY_FILE = "calibration.png"
MODEL_DIR = "model"
# the run's MLflow model: the pyfunc loader module and the folder of its data inside the model
LOADER_MODULE = "leukexp.inference.serving"
# models written before the inference wing existed name the loader where it was then; both load
LOADER_MODULES = (LOADER_MODULE, "leukexp.serving")
MODEL_DATA_DIR = "classifier"
# in a saved classifier: the content hash and file of every picture it was fitted on (training and validation)
TRAINED_ON_FILE = "trained_on.csv"
# params of every run whose differential reads its cell types from a finished cell study (`head.cells=URI`)
CELL_STUDY_PREFIX = "cell_study."
CAM_DIR = "cam"
PROBABILITY_PREFIX = "p_"
# the screening decision at a model's operating point (`leukexp-predict` and the served model, when it has one)
DECISION_COLUMN = "decision"


def quote_filter(value: str) -> str:
    """A value as an MLflow filter string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def kind_filter(kind: str) -> str:
    """The MLflow filter that selects runs of one kind (`fold` or `cv`)."""
    return f"tags.`{KIND_TAG}` = '{kind}'"


def cv_metric(metric: str, statistic: str) -> str:
    """The parent's aggregate name of a fold metric, e.g. `cv/test/acc_mean`."""
    return f"{CV}{metric}_{statistic}"


# a CV parent's count of finished folds (a metric; the tag FOLDS_FINISHED_TAG says the same as text)
FOLDS_FINISHED_METRIC = cv_metric("folds", "finished")


@dataclass(frozen=True)
class Predictions:
    """Per-sample test predictions as `predictions.csv` holds them.

    Args:
        files: source image file (relative to the data root) of each sample.
        views: view index of each sample (0 is the original image).
        labels: true class index of each sample.
        probs: class probabilities (samples, classes).
        classes: class names in index order.
    """

    files: np.ndarray
    views: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    classes: list[str]

    def to_frame(self) -> pd.DataFrame:
        """The `predictions.csv` table: file, view, label, predicted, `p_<class>` per class."""
        return pd.DataFrame({
            "file": self.files,
            "view": self.views,
            "label": [self.classes[i] for i in self.labels],
            "predicted": [self.classes[i] for i in self.probs.argmax(1)],
            **{f"{PROBABILITY_PREFIX}{c}": self.probs[:, i] for i, c in enumerate(self.classes)},
        })

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Predictions:
        """Read back a `predictions.csv` table."""
        classes = [c.removeprefix(PROBABILITY_PREFIX) for c in frame.columns if c.startswith(PROBABILITY_PREFIX)]
        index = {c: i for i, c in enumerate(classes)}
        return cls(
            files=frame["file"].to_numpy(),
            views=frame["view"].to_numpy() if "view" in frame else np.zeros(len(frame), int),
            labels=frame["label"].map(index).to_numpy(),
            probs=frame[[f"{PROBABILITY_PREFIX}{c}" for c in classes]].to_numpy(dtype=float),
            classes=classes,
        )
