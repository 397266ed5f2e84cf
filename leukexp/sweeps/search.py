"""Config-only search: an Optuna study over any config key, each trial a configuration's k folds.

`hydra/sweeper=optuna` (the plugin `hydra_plugins.leukexp_search`) samples the search space written in Hydra's own
override syntax (`interval(1e-4, 1e-2)`, `tag(log, interval(...))`, `choice(...)`, `range(...)`), runs the trial's
folds through the configured launcher (in parallel where it is parallel), reports each finished fold to Optuna and
prunes a trial whose early folds are clearly worse; a launcher with a worker for every fold of several trials runs
those trials together. The study lives in a journal file beside the MLflow store, so the
same command continues it; the MLflow store shows a search run with one CV parent per trial under it.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from leukexp.errors import LeukexpError
from leukexp.runtime.process import usable_cores
from leukexp.runtime.signals import Interrupted
from leukexp.vocabulary import (
    BEST,
    CV,
    KIND_FOLD,
    KIND_SEARCH,
    KIND_TAG,
    NAME_TAG,
    NOTE_CONTENT,
    PARENT_TAG,
    SEARCH_STORAGE_TAG,
    SEARCH_TAG,
    SELECTION_METRIC,
    TRIAL_STATE_TAG,
    TRIAL_TAG,
    cv_metric,
    is_fold_metric,
    quote_filter,
)

log = logging.getLogger("leukexp")
# config keys a search may not vary: they say which fold runs, or where results go, not what is computed
NOT_SEARCHABLE = ("fold", "fold.index", "fold.name", "optimized_metric", "search", "hydra", "paths", "mlflow")


@dataclass(frozen=True)
class Space:
    """The search space: Optuna distributions by override key, the fixed overrides, and how choices are written."""

    distributions: dict[str, Any]
    fixed: list[str]
    labels: dict[str, dict[Any, str]]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The sampled values as command-line overrides (`head.C=0.0316`, `head.hidden=[256,64]`)."""
        return [f"{key}={self.labels.get(key, {}).get(value, override_value(value))}" for key, value in
                params.items()]


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text."""
    if isinstance(value, float):
        return f"{value:.6g}"  # six significant digits: a readable run name, a value Optuna's record rounds to
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    return str(value)


def fold_metric(objective: str) -> str:
    """The fold-run metric an objective averages: `cv/best/val/acc_mean` -> `best/val/acc`."""
    metric = objective.removeprefix(CV).removesuffix("_mean")
    if not (objective.startswith(CV) and objective.endswith("_mean")) or not is_fold_metric(metric):
        raise LeukexpError(f"hydra.sweeper.objective={objective!r}: expected the fold mean of a metric fold runs log,"
                           " e.g. cv/best/val/acc_mean (validation: the default), cv/val/loss_mean or cv/test/acc_mean")
    return metric


def _distribution(key: str, sweep: object) -> tuple[Any, dict[Any, str]]:
    """The Optuna distribution of one parsed sweep, and labels for choices that are not plain values."""
    import optuna.distributions as dist

    if isinstance(sweep, IntervalSweep):
        low, high, log_scale = sweep.start, sweep.end, "log" in sweep.tags
        if low is None or high is None or not low < high:
            raise LeukexpError(f"hydra.sweeper.params.{key}: interval({low}, {high}) is empty; give low < high")
        if log_scale and low <= 0:
            raise LeukexpError(f"hydra.sweeper.params.{key}: a log interval needs low > 0 (got {low})")
        if isinstance(low, int) and isinstance(high, int):
            return dist.IntDistribution(int(low), int(high), log=log_scale), {}
        return dist.FloatDistribution(float(low), float(high), log=log_scale), {}
    if isinstance(sweep, ChoiceSweep | RangeSweep):
        values = list(sweep.list) if isinstance(sweep, ChoiceSweep) else list(_range(sweep))
        if not values:
            raise LeukexpError(f"hydra.sweeper.params.{key}: the choice is empty; give at least one value")
        plain = [v if isinstance(v, str | int | float | bool) or v is None else override_value(_container(v))
                 for v in values]
        labels = {p: override_value(_container(v)) for p, v in zip(plain, values, strict=True) if p is not v}
        return dist.CategoricalDistribution(plain), labels
    raise LeukexpError(f"hydra.sweeper.params.{key}: {type(sweep).__name__} is not a search dimension; use"
                       " interval(...), tag(log, interval(...)), choice(...) or range(...)")


def _range(sweep: RangeSweep) -> Sequence[Any]:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if start is None or stop is None or not step:
        raise LeukexpError("hydra.sweeper.params: range(start, stop[, step]) needs a start, a stop and a step != 0")
    count = math.ceil((stop - start) / step)
    return [start + i * step for i in range(max(0, count))]


def _container(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def parse_space(params: Mapping[str, Any], arguments: Sequence[str], config: DictConfig,
                compose: Callable[[list[str]], DictConfig] | None = None) -> Space:
    """The search space from the sweeper's `params` and the command line's sweep overrides; every other override
    is fixed. An unknown key, a key a search may not vary or an empty range is one line, before any trial runs.

    `compose` builds the config under some overrides: a key inside a searched group (`head.C` while `head` is
    searched) must exist under one of that group's options.
    """
    texts = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    try:
        parsed: list[Override] = OverridesParser.create().parse_overrides(texts)
    except Exception as error:  # Hydra's parser explains the syntax error
        raise LeukexpError(f"hydra.sweeper.params: {str(error).splitlines()[0]}") from error
    distributions: dict[str, Any] = {}
    labels: dict[str, dict[Any, str]] = {}
    fixed = [text for override, text in zip(parsed, texts, strict=True) if not override.is_sweep_override()]
    groups = {o.key_or_group: list(o.sweep_string_iterator()) for o in parsed
              if o.is_sweep_override() and o.is_discrete_sweep() and o.key_or_group in _choices(config)}
    for override in parsed:
        key = override.key_or_group
        if not override.is_sweep_override():
            continue
        group = next((g for g in groups if key.startswith(g + ".")), None)
        if group is not None and compose is not None:
            configs = [compose([*fixed, f"{group}={option}"]) for option in groups[group]]
            if not any(_has_key(c, key) for c in configs):
                raise LeukexpError(f"hydra.sweeper.params.{key}: no option of {group} ({', '.join(groups[group])})"
                                   " has this key; see leukexp-train --cfg job")
        elif group is None:
            check_key(key, config)
        value = override.value()
        if key in _choices(config) and not (isinstance(value, ChoiceSweep)
                                            and all(isinstance(option, str) for option in value.list)):
            raise LeukexpError(f"hydra.sweeper.params.{key}: {key} is a config group, its values are option names;"
                               f" search them with choice(...), e.g. {key}='choice({_choices(config)[key]}, ...)'")
        distributions[key], labels[key] = _distribution(key, override.value())  # `a,b` is choice(a,b) too
    if not distributions:
        raise LeukexpError("hydra.sweeper.params: no search dimension; give e.g."
                           " hydra.sweeper.params.optimizer.lr='tag(log, interval(1e-4, 1e-2))'")
    return Space(distributions, fixed, labels)


def _choices(config: DictConfig) -> dict[str, Any]:
    return dict(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})


def _has_key(config: DictConfig, key: str) -> bool:
    return OmegaConf.select(config, key, default="<missing>", throw_on_missing=False) != "<missing>"


def check_key(key: str, config: DictConfig) -> None:
    """A key to search must exist in the composed config (or be a config group) and change what a run computes."""
    if any(key == k or key.startswith(k + ".") for k in NOT_SEARCHABLE):
        raise LeukexpError(f"hydra.sweeper.params.{key}: a search varies what a run computes, not {key}")
    choices = _choices(config)
    if key in choices or key.replace(".", "/") in choices:
        return
    if not _has_key(config, key):
        raise LeukexpError(f"hydra.sweeper.params.{key}: no such config key; see leukexp-train --cfg job")


def study_storage(config: DictConfig, name: str, storage: str | None) -> Path:
    """The study's journal file: `storage`, else beside a local MLflow store (`<store folder>/optuna/`), else under
    the project's `mlruns/optuna/` (a tracking server's store is not on this file system)."""
    if storage:
        return Path(storage).expanduser()
    from leukexp.tracking.store import local_store_dir

    folder = local_store_dir(str(config.mlflow.tracking_uri)) if config.mlflow.enabled else None
    return (folder or Path(str(config.paths.root_dir)) / "mlruns") / "optuna" / f"{name}.journal"


def default_study_name(config: DictConfig, space: Space, objective: str) -> str:
    """The experiment's name and a hash of the space, fixed overrides and objective: the same command, the same
    study (so re-running it continues the study)."""
    text = repr((sorted((k, repr(d)) for k, d in space.distributions.items()), sorted(space.fixed), objective))
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{config.mlflow.experiment_name}-search-{digest}"


INTERRUPTED = "leukexp_interrupted"


JOURNAL_SETTLED_SECONDS = 10.0  # a cut-short last line older than this is a killed write, not one in progress


def check_journal(path: Path) -> None:
    """A journal Optuna can read, before it reads it: a last line cut short by a killed write (older than
    `JOURNAL_SETTLED_SECONDS`) is dropped with a warning (the trials before it are kept; the file as it was is kept
    beside, `.damaged`); any other line that is not a journal entry (junk, bytes that are not UTF-8) is one line
    naming the file, the line and how to go on."""
    import json
    import time

    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    ends_whole = data.endswith(b"\n") or not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            if not isinstance(entry, dict) or "op_code" not in entry:
                raise ValueError("not an Optuna journal operation")
            continue
        except (UnicodeDecodeError, ValueError) as error:
            why = "bytes that are not UTF-8" if isinstance(error, UnicodeDecodeError) else "not a journal entry"
            last = number == len(lines) and not ends_whole
        if last and time.time() - path.stat().st_mtime >= JOURNAL_SETTLED_SECONDS:
            from leukexp.files import atomic_path

            path.with_name(path.name + ".damaged").write_bytes(data)
            with atomic_path(path) as staging:
                staging.write_bytes(b"\n".join(lines[:-1]) + b"\n")
            log.warning("search journal %s: its last line was cut short (a killed write); it is dropped and the %d"
                        " entries before it kept (the file as it was: %s.damaged)", path, number - 1, path.name)
            return
        raise LeukexpError(f"hydra.sweeper.storage: {path}: line {number} is {why}; remove that line to continue the"
                           " search, or move the file aside to start it afresh")


def journal(path: Path) -> Any:
    """A study's Optuna storage: the journal file at `path` (Optuna's own logging kept to warnings)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(JournalFileBackend(str(path)))


def counted(study: Any) -> list[Any]:
    """The trials that count towards `n_trials`: finished (complete, pruned, failed), not interrupted by a kill."""
    return [t for t in study.trials if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]


class FoldSearch(Sweeper):
    """A Hydra sweeper whose trials are a configuration's k folds (see the module's text).

    Args:
        params: the search space, key -> Hydra override syntax.
        n_trials: trials the study should hold when the command ends (finished ones count, also from earlier runs).
        direction: `maximize` or `minimize` the objective.
        objective: the fold mean to optimize, `cv/<fold metric>_mean` (default `cv/best/val/acc_mean`: validation).
        sampler: `tpe` (default), `random` or `cmaes`.
        seed: the sampler's seed.
        pruner: `median` (stop a trial whose running fold mean is below the median of earlier trials at that fold),
            or `none`.
        pruner_startup_trials: trials that finish before any is pruned.
        study_name: the Optuna study (default: the experiment's name and a hash of the space).
        storage: the journal file (default: beside the MLflow store, `optuna/<study>.journal`).
        enqueue: parameter sets to try first, e.g. `[{optimizer.lr: 0.001}]`.
    """

    def __init__(self, params: Mapping[str, Any] | None = None, n_trials: int = 20, direction: str = "maximize",
                 objective: str = cv_metric(BEST + SELECTION_METRIC, "mean"), sampler: str = "tpe", seed: int = 0,
                 pruner: str = "median", pruner_startup_trials: int = 2, study_name: str | None = None,
                 storage: str | None = None, enqueue: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.params = dict(params or {})
        self.n_trials, self.direction, self.objective = int(n_trials), str(direction), str(objective)
        self.sampler_name, self.seed, self.pruner_name = str(sampler), int(seed), str(pruner)
        self.pruner_startup_trials = int(pruner_startup_trials)
        self.study_name, self.storage = study_name, storage
        self.enqueue = [dict(_container(e)) for e in (enqueue or [])]
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.job_index = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the config and build the configured launcher."""
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                 task_function=task_function, config=config)

    def _compose(self, overrides: list[str]) -> DictConfig:
        """The config a job with these overrides would get (Hydra's own composition; its errors are one line)."""
        assert self.config is not None
        try:
            return self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                      sweep_overrides=overrides)
        except Exception as error:  # an option that does not exist
            raise LeukexpError(f"hydra.sweeper.params: {' '.join(overrides)}: {str(error).splitlines()[0]}") from error

    def _check(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise LeukexpError(f"hydra.sweeper.direction={self.direction!r}: expected maximize or minimize")
        if self.n_trials < 1:
            raise LeukexpError(f"hydra.sweeper.n_trials={self.n_trials}: expected a whole number >= 1")
        if self.sampler_name not in ("tpe", "random", "cmaes"):
            raise LeukexpError(f"hydra.sweeper.sampler={self.sampler_name!r}: expected tpe, random or cmaes")
        if self.pruner_name not in ("median", "none"):
            raise LeukexpError(f"hydra.sweeper.pruner={self.pruner_name!r}: expected median or none")

    def _study(self, name: str, path: Path) -> Any:
        import optuna

        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                    "cmaes": optuna.samplers.CmaEsSampler}
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup_trials, n_warmup_steps=0)
                  if self.pruner_name == "median" else optuna.pruners.NopPruner())
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
        study = optuna.create_study(study_name=name, storage=journal(path), pruner=pruner, direction=self.direction,
                                    load_if_exists=True)
        # seeded by the history, not only by `seed`: a continued study draws new values, not its first ones again
        study.sampler = samplers[self.sampler_name](seed=self.seed + len(study.trials))
        return study

    def sweep(self, arguments: list[str]) -> list[Any]:
        """Run trials until the study holds `n_trials` finished ones; return the job results."""
        from optuna.trial import TrialState

        assert self.config is not None
        self._check()
        space = parse_space(self.params, arguments, self.config, self._compose)
        metric = fold_metric(self.objective)
        name = self.study_name or default_study_name(self.config, space, self.objective)
        path = study_storage(self.config, name, self.storage)
        study = self._study(name, path)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # a search killed mid-trial: its values are tried again first (its finished folds are reused), and the
            # interrupted trial does not count as one of the n_trials
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study.enqueue_trial(trial.params, skip_if_exists=False)
            study.tell(trial.number, state=TrialState.FAIL)
        if not study.trials:
            for params in self.enqueue:
                study.enqueue_trial(params)
        tracker = SearchTracker.open(self.config, name, path, resume=len(counted(study)) < self.n_trials)
        folds = int(self.config.fold.n_splits)
        log.info("search %s: %d of %d trials done; study %s", name, len(counted(study)), self.n_trials, path)
        try:
            return self._trials(study, space, metric, name, tracker, folds)
        except BaseException as error:  # a failing launcher or an interruption: the search run does not stay RUNNING
            if tracker:
                tracker.end("KILLED" if isinstance(error, KeyboardInterrupt | SystemExit | Interrupted) else "FAILED")
            raise

    def _trials(self, study: Any, space: Space, metric: str, name: str, tracker: SearchTracker | None,
                folds: int) -> list[Any]:
        """Ask, run and tell trials until `n_trials` have finished; return the job results."""
        from optuna.trial import TrialState

        results = []
        together = trials_at_once(self.launcher, folds)
        while (remaining := self.n_trials - len(counted(study))) > 0:
            group = []
            for _ in range(min(together, remaining)):
                trial = study.ask(dict(space.distributions))
                group.append((trial, space.fixed + space.overrides(trial.params) + [
                    f"optimized_metric={metric}", f"search.study={name}", f"search.trial={trial.number}",
                    *([f"search.run_id={tracker.run_id}"] if tracker else [])]))
            if len(group) == 1:
                state, value, jobs = self._run_trial(*group[0], folds)
                outcomes = [(group[0][0], state, value)]
            else:
                outcomes, jobs = self._run_together(group, folds)
            results += jobs
            for trial, state, value in outcomes:
                if state == TrialState.COMPLETE:
                    study.tell(trial, value)
                else:
                    study.tell(trial, state=state)
                log.info("search %s: trial %d %s%s", name, trial.number, state.name.lower(),
                         f" ({self.objective} {value:.4f})" if value is not None else "")
                if tracker:
                    tracker.record(study, trial.number, state.name.lower())
        return results

    def _run_together(self, group: list[tuple[Any, list[str]]], folds: int) -> tuple[list[Any], list[Any]]:
        """Several trials' folds in one batch (a launcher with a worker for every fold of each): each trial is
        reported fold by fold afterwards; nothing is left to prune."""
        from optuna.trial import TrialState

        jobs = [[*overrides, f"fold.index={i}", f"fold.name=f{i}"] for _, overrides in group for i in range(folds)]
        self.validate_batch_is_legal(jobs)
        finished = self.launcher.launch(jobs, initial_job_idx=self.job_index)
        self.job_index += len(jobs)
        outcomes = []
        for n, (trial, _) in enumerate(group):
            values = [job_value(job) for job in finished[n * folds:(n + 1) * folds]]
            if any(v is None for v in values):
                outcomes.append((trial, TrialState.FAIL, None))
                continue
            for step in range(1, folds + 1):
                trial.report(sum(values[:step]) / step, step=step)
            outcomes.append((trial, TrialState.COMPLETE, sum(values) / folds))
        return outcomes, list(finished)

    def _run_trial(self, trial: Any, overrides: list[str], folds: int) -> tuple[Any, float | None, list[Any]]:
        """The trial's folds, in batches of the launcher's parallel jobs; each batch reported, pruning between."""
        from optuna.trial import TrialState

        batch = parallel_jobs(self.launcher, folds)
        values: list[float] = []
        returns: list[Any] = []
        for start in range(0, folds, batch):
            jobs = [[*overrides, f"fold.index={i}", f"fold.name=f{i}"] for i in range(start, min(folds, start + batch))]
            self.validate_batch_is_legal(jobs)
            finished = self.launcher.launch(jobs, initial_job_idx=self.job_index)
            self.job_index += len(jobs)
            returns += finished
            for job in finished:
                if (value := job_value(job)) is None:
                    return TrialState.FAIL, None, returns
                values.append(value)
            mean = sum(values) / len(values)
            trial.report(mean, step=len(values))
            if len(values) < folds and trial.should_prune():
                return TrialState.PRUNED, None, returns
        return TrialState.COMPLETE, sum(values) / len(values), returns


def launcher_slots(launcher: Any) -> int | None:
    """The launcher's parallel jobs (joblib's `n_jobs`, submitit's `array_parallelism`; 1 for the basic launcher);
    None for joblib's -1 (every core) and for Ray (its cluster schedules every job it is given)."""
    if getattr(launcher, "ray_cfg", None) is not None:
        return None
    settings = dict(getattr(launcher, "joblib", None) or getattr(launcher, "params", None) or {})
    jobs = int(settings.get("n_jobs", settings.get("array_parallelism", 1)) or 1)
    return None if jobs < 1 else jobs


def parallel_jobs(launcher: Any, folds: int) -> int:
    """Folds of one trial launched at once: the launcher's parallel jobs (all folds for -1), else one at a time (so
    the basic launcher can prune after every fold)."""
    slots = launcher_slots(launcher)
    return folds if slots is None else min(folds, slots)


def trials_at_once(launcher: Any, folds: int) -> int:
    """Trials run together: as many as the launcher has a worker for every fold of (joblib n_jobs=10 and 5 folds: 2);
    one otherwise, so that a trial's early folds can prune it."""
    slots = launcher_slots(launcher) or usable_cores()
    return max(1, slots // folds)


def job_value(job: Any) -> float | None:
    """A finished job's objective value; None for a failed job or a value that is not a finite number."""
    from hydra.core.utils import JobStatus

    value = job._return_value if job.status == JobStatus.COMPLETED else None
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


class SearchTracker:
    """The search's MLflow run (kind `search`): trial parents sit under it, tagged with their trial and state."""

    def __init__(self, client: Any, experiment_id: str, run_id: str, name: str) -> None:
        self.client, self.experiment_id, self.run_id, self.name = client, experiment_id, run_id, name

    @classmethod
    def open(cls, config: DictConfig, name: str, storage: Path, resume: bool = True) -> SearchTracker | None:
        """The search run of this study, created on first use (None when MLflow is off); an existing one is set
        RUNNING again only when trials are left to run (`resume`): a finished search run again stays FINISHED."""
        if not config.mlflow.enabled:
            return None
        from mlflow.tracking import MlflowClient

        from leukexp.tracking.store import artifact_root, ensure_experiment

        uri = str(config.mlflow.tracking_uri)
        client = MlflowClient(uri)
        experiment = ensure_experiment(client, str(config.mlflow.experiment_name),
                                       artifact_root(uri, config.mlflow.get("artifact_location")))
        query = f"tags.`{KIND_TAG}` = '{KIND_SEARCH}' and tags.`{SEARCH_TAG}` = {quote_filter(name)}"
        found = client.search_runs([experiment], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            if resume:
                client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(experiment, run_name=f"search {name}", tags={
                KIND_TAG: KIND_SEARCH, SEARCH_TAG: name, SEARCH_STORAGE_TAG: str(storage), NAME_TAG: name}).info.run_id
        return cls(client, experiment, run_id, name)

    def end(self, status: str) -> None:
        """Mark the search run ended (`FAILED`, `KILLED`) when the search stops early: its workers are stopped first,
        then its trials' parents and folds they left RUNNING are KILLED."""
        import contextlib

        from leukexp.runtime.signals import reap_children
        from leukexp.tracking.cv import close_stopped

        reap_children()  # a worker stopped half-way may not have closed its runs
        with contextlib.suppress(Exception):  # the store may be what failed: the original error is the one to see
            query = f"tags.`{PARENT_TAG}` = {quote_filter(self.run_id)} and attributes.status = 'RUNNING'"
            running = self.client.search_runs([self.experiment_id], query, max_results=10000)
            close_stopped(self.client, self.experiment_id, [r.info.run_id for r in running])
        with contextlib.suppress(Exception):
            self.client.set_terminated(self.run_id, status)

    def record(self, study: Any, number: int, state: str) -> None:
        """Tag the trial's parent with its number and state; the search run's counts, best value and trial table."""
        import time

        from mlflow.entities import Metric

        query = f"tags.`{SEARCH_TAG}` = {quote_filter(self.name)} and tags.`{TRIAL_TAG}` = '{number}'"
        parents = {r.data.tags.get(PARENT_TAG) for r in self.client.search_runs([self.experiment_id], query)
                   if r.data.tags.get(KIND_TAG) == KIND_FOLD}
        for parent in filter(None, parents):
            self.client.set_tag(parent, TRIAL_TAG, str(number))
            self.client.set_tag(parent, TRIAL_STATE_TAG, state)
        trials = counted(study)
        counts = {s: sum(t.state.name.lower() == s for t in trials) for s in ("complete", "pruned", "fail")}
        metrics = {f"search/trials_{s}": float(n) for s, n in counts.items()}
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        if complete:
            metrics["search/best_value"] = float(study.best_value)
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, len(trials)) for k, v in metrics.items()])
        self.client.set_tag(self.run_id, NOTE_CONTENT, trial_table(study))
        self.client.set_terminated(self.run_id, "FINISHED")


def trial_table(study: Any) -> str:
    """The search run's description: every finished trial, best first, as markdown."""
    trials = counted(study)
    keys = sorted({k for t in trials for k in t.params})
    reverse = study.direction.name == "MAXIMIZE"
    ordered = sorted(trials, key=lambda t: (t.value is None, -(t.value or 0) if reverse else (t.value or 0)))
    lines = [f"### search {study.study_name}", "", f"{len(trials)} trials. Objective: the fold mean.", "",
             "| trial | state | value | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for t in ordered:
        value = f"{t.value:.4f}" if t.value is not None else "-"
        cells = [override_value(t.params[k]) if k in t.params else "-" for k in keys]
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
