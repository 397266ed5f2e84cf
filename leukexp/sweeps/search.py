"""Config-only search: an Optuna study over any config key, each trial a configuration's k folds.

`hydra/sweeper=optuna` (the plugin `hydra_plugins.leukexp_search`) samples the search space written in Hydra's own
override syntax (`interval(1e-4, 1e-2)`, `tag(log, interval(...))`, `choice(...)`, `range(...)`), runs the trial's
folds through the configured launcher (in parallel where it is parallel), reports each finished fold to Optuna and
prunes a trial whose early folds are clearly worse; a launcher with a worker for every fold of several trials runs
those trials together. The study lives in a journal file beside the MLflow store, so the
same command continues it; the MLflow store shows a search run with one CV parent per trial under it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from leukexp.errors import LeukexpError
from leukexp.runtime.process import usable_cores
from leukexp.runtime.signals import Interrupted
from leukexp.sweeps.journal import INTERRUPTED, check_journal, counted, journal, study_storage
from leukexp.sweeps.search_tracking import SearchTracker
from leukexp.sweeps.space import Space, container, default_study_name, fold_metric, parse_space
from leukexp.vocabulary import BEST, SELECTION_METRIC, cv_metric

log = logging.getLogger("leukexp")


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
        self.enqueue = [dict(container(e)) for e in (enqueue or [])]
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None
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
        if self.config is None or self.hydra_context is None:
            raise ValueError("the sweeper composes jobs after Hydra's setup")
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
        direction: Literal["maximize", "minimize"] = "minimize" if self.direction == "minimize" else "maximize"
        study = optuna.create_study(study_name=name, storage=journal(path), pruner=pruner, direction=direction,
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
        outcomes: list[tuple[Any, TrialState, float | None]] = []
        for n, (trial, _) in enumerate(group):
            found = [job_value(job) for job in finished[n * folds:(n + 1) * folds]]
            values = [v for v in found if v is not None]
            if len(values) < len(found):
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
