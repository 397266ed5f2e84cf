"""What a fold run embeds, derived once: the run's steps and `leukexp-extract` read the same list."""

import numpy as np

from conftest import TINY_DATA
from leukexp.data.fold_data import build_fold_data
from leukexp.run.embeds import EXTERNAL_IMAGES, SPLITS, TEST_VIEWS, find, fold_embeds

SMALL = [*TINY_DATA, "task=binary", "augmentation=flips"]


def pairs(frame) -> set[tuple[int, int]]:
    return set(zip(frame["source"].tolist(), frame["view"].tolist(), strict=True))


def test_a_fold_embeds_its_training_views_and_its_validation_and_test_originals(compose_plan) -> None:
    plan = compose_plan(*SMALL)
    fold_data = build_fold_data(plan)
    embeds = fold_embeds(plan, fold_data)
    assert [item.purpose for item in embeds] == [SPLITS]
    samples = fold_data.samples
    assert len(embeds[0].samples) == len(samples.train) + len(samples.val) + len(samples.test)
    assert set(samples.train["view"]) == {0, 1, 2} and set(samples.test["view"]) == {0}


def test_test_time_views_and_the_external_set_are_part_of_the_list(compose_plan) -> None:
    plan = compose_plan(*SMALL, "evaluation.tta=flips",
                        "evaluation.external={config: synthetic_b, counts: {ALL: 3, HLT: 2}, image_size: 64}")
    fold_data = build_fold_data(plan)
    from leukexp.data.external import scan_external

    external = scan_external(plan.evaluation.external, fold_data.task, fold_data.classes)
    embeds = fold_embeds(plan, fold_data, external)
    assert [item.purpose for item in embeds] == [SPLITS, TEST_VIEWS, EXTERNAL_IMAGES]
    tests = fold_data.samples.test["source"].unique()
    views = find(embeds, TEST_VIEWS)
    assert pairs(views.samples) == {(s, v) for s in tests for v in range(3)}, "every view of every test image"
    outside = find(embeds, EXTERNAL_IMAGES)
    assert len(outside.samples) == 5 * 3 and outside.catalog is external.frame
    assert np.array_equal(outside.samples["label_index"].to_numpy()[::3], external.frame["label_index"].to_numpy())


def test_online_views_leave_the_training_rows_out(compose_plan) -> None:
    plan = compose_plan(*TINY_DATA, "task=binary", "augmentation=online")
    fold_data = build_fold_data(plan)
    assert len(fold_embeds(plan, fold_data)[0].samples) == len(fold_data.samples.val) + len(fold_data.samples.test)


def test_leukexp_extract_asks_for_every_row_any_fold_run_asks_for(compose_plan) -> None:
    from leukexp.commands.extract import fold_plans, study_embeds

    plan = compose_plan(*SMALL, "fold.n_splits=3", "evaluation.tta=flips")
    wanted: dict[str, set] = {}
    for fold_plan in fold_plans(plan):
        for item in fold_embeds(fold_plan, build_fold_data(fold_plan)):
            wanted.setdefault(item.purpose, set()).update(pairs(item.samples))
    extracted = {item.purpose: pairs(item.samples) for item in study_embeds(plan)}
    assert extracted == wanted
    assert all(len(item.samples) == len(pairs(item.samples)) for item in study_embeds(plan)), "each row once"
