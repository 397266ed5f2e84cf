"""A fold run's tags: written from the plan's identity and the fold's data."""

from conftest import TINY_DATA
from leukexp.data.fold_data import build_fold_data
from leukexp.tracking.identity import git_commit, run_tags
from leukexp.vocabulary import CV_GROUP_TAG, FOLD_TAG, HEAD_TAG, KIND_FOLD, KIND_TAG, NAME_TAG, SEARCH_TAG, TTA_TAG


def test_tags_come_from_the_plan_and_the_folds_data(compose_plan) -> None:
    plan = compose_plan(*TINY_DATA, "task=binary", "augmentation=none", "head=logreg", "fold=f2",
                        "evaluation.tta=flips", "search.study=s1")
    tags = run_tags(plan, build_fold_data(plan))
    assert tags[CV_GROUP_TAG] == plan.identity.cv_group and tags[NAME_TAG] == plan.identity.name
    assert tags[HEAD_TAG] == "logreg" and tags[FOLD_TAG] == "f2" and tags[TTA_TAG] == "flips"
    assert tags[KIND_TAG] == KIND_FOLD and tags[SEARCH_TAG] == "s1"


def test_git_commit_outside_git(tmp_path) -> None:
    assert git_commit(tmp_path) == "unknown"
