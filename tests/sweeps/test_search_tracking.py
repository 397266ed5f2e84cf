"""The search's MLflow description: every counted trial, best first, interrupted trials left out."""

import optuna

from leukexp.sweeps.journal import INTERRUPTED
from leukexp.sweeps.search_tracking import trial_table


def test_the_trial_table_lists_counted_trials_best_first() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", direction="maximize")
    for x, state in ((0.2, "complete"), (0.9, "complete"), (0.5, "pruned"), (0.7, "interrupted")):
        trial = study.ask({"head.C": optuna.distributions.FloatDistribution(0.0, 1.0)})
        trial.suggest_float("head.C", 0.0, 1.0)
        study._storage.set_trial_param(trial._trial_id, "head.C", x, trial.distributions["head.C"])
        if state == "complete":
            study.tell(trial, x)
        elif state == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    rows = [line for line in trial_table(study).splitlines() if line.startswith("| ") and "trial" not in line]
    assert rows == ["| 1 | complete | 0.9000 | 0.9 |", "| 0 | complete | 0.2000 | 0.2 |", "| 2 | pruned | - | 0.5 |"]
    assert "3 trials" in trial_table(study)
