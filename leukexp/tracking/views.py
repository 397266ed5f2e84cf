"""The saved view of an experiment's runs table: the ranking of its configurations, opened from the UI's Views menu.

MLflow's UI (3.15+) keeps saved views of the runs table as experiment tags: the key
`mlflow.sharedViewState.<id>`, the value an envelope `{"name", "createdAt", "updatedAt", "state"}` whose `state` is the
JSON of the table's search facets (filter, sort) and UI state (columns), read by the UI's runs page (the installed
UI's `5439` and `3448` chunks: `Xq`/`aR` list the views, `lB` reads the envelope, `_d` the state). Column keys are
`<kind>.\\`<name>\\`` as the UI writes them (`metrics.\\`cv/test/acc_mean\\``). leukexp writes one view per experiment
under a fixed id (a sweep refreshes it, never adds another), so the UI opens it at
`#/experiments/<id>/runs?viewStateShareKey=leukexp-ranking`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from mlflow.tracking import MlflowClient

from leukexp.vocabulary import (
    BALANCED_ACC,
    CI_HIGH,
    CI_LOW,
    ECE,
    FOLDS_FINISHED_METRIC,
    KIND_CV,
    KIND_TAG,
    LABEL_TAGS,
    RESULT_TAG,
    TEST,
    TEST_ACC,
    cv_metric,
    metric_name,
)

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_URL_PARAMETER = "viewStateShareKey"
RANKING_VIEW_ID = "leukexp-ranking"


def column(kind: str, name: str) -> str:
    """A runs-table column key as the UI writes it: `metrics.\\`cv/test/acc_mean\\``."""
    return f"{kind}.`{name}`"


def ranking_state(metric: str, swept: Sequence[str], maximize: bool = True) -> dict[str, Any]:
    """The runs table that ranks an experiment's configurations: CV parents only, sorted by the fold mean of
    `metric` (a fold metric, e.g. `test/acc`), with the columns that decide: the result line, the metric's mean,
    spread and 95% interval, balanced accuracy and calibration error, the swept keys' values and the folds."""
    mean = cv_metric(metric, "mean")
    stage = metric.rsplit("/", 1)[0] if "/" in metric else TEST.rstrip("/")
    columns = [column("tags", RESULT_TAG), column("metrics", mean), column("metrics", cv_metric(metric, "std")),
               column("metrics", cv_metric(metric, CI_LOW.lstrip("_"))),
               column("metrics", cv_metric(metric, CI_HIGH.lstrip("_")))]
    for extra in (metric_name(stage, BALANCED_ACC), metric_name(stage, ECE)):
        if extra != metric:
            columns.append(column("metrics", cv_metric(extra, "mean")))
    for key in swept:  # a parent's params hold its settings and its groups' choices (the model, head... as tags)
        columns.append(column("tags", key) if key in LABEL_TAGS else column("params", key))
    columns += [column("metrics", FOLDS_FINISHED_METRIC), column("attributes", "Dataset")]
    return {
        "searchFilter": f"tags.`{KIND_TAG}` = '{KIND_CV}'",
        "orderByKey": column("metrics", mean),
        "orderByAsc": not maximize,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(dict.fromkeys(columns)),
        "columnOrder": list(dict.fromkeys(columns)),  # the deciding columns first, in this order
        "runsHiddenMode": "SHOW_ALL",
        "runListHidden": False,
        "viewMaximized": False,
        "groupBy": None,
    }


def save_ranking_view(client: MlflowClient, experiment_id: str, metric: str = TEST_ACC,
                      swept: Sequence[str] = (), maximize: bool = True) -> str:
    """Write (or refresh) the experiment's ranking view; return its id. Its creation time is kept on refresh."""
    key = VIEW_TAG_PREFIX + RANKING_VIEW_ID
    now = int(time.time() * 1000)
    created = now
    existing = client.get_experiment(experiment_id).tags.get(key)
    if existing:
        try:
            created = int(json.loads(existing)["createdAt"])
        except (ValueError, KeyError, TypeError):
            created = now
    state = ranking_state(metric, swept, maximize)
    name = f"leukexp ranking: {cv_metric(metric, 'mean')}"
    envelope = {"name": name, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, key, json.dumps(envelope))
    return RANKING_VIEW_ID


def view_url(base: str, experiment_id: str, view_id: str = RANKING_VIEW_ID) -> str:
    """The UI address that opens a saved view (`base`: the server, e.g. http://127.0.0.1:5000)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{VIEW_URL_PARAMETER}={view_id}"
