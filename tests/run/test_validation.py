"""Config checks before any work: the rule table, the model check and the head's own checks."""

import pytest

from conftest import TINY_MODEL
from leukexp.errors import LeukexpError
from leukexp.run.validation import check_accelerator, check_head, check_model, check_rules, validate


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.lr=0", "optimizer.lr=0: expected a positive learning rate"),
    ("training.batch_size=1.5", "training.batch_size=1.5"),
    ("seed=true", "seed=True: expected a whole number"),
    ("fold.index=5", "fold.index=5: out of range for fold.n_splits=5"),
    ("fold.val_fraction=0", "fold.val_fraction=0"),
    ("features.device=cuda:x", "features.device='cuda:x'"),
    ("features.batch_size=fast", "features.batch_size='fast': expected auto or a whole number from 1 to 65,536"),
    ("features.batch_size=100000000", "features.batch_size=100000000: expected auto or a whole number from 1"),
    ("trainer.max_epochs=100000000", "trainer.max_epochs=100000000: expected a whole number of epochs from 1 to"),
    ("mlflow.create_store_folder=maybe", "mlflow.create_store_folder='maybe': expected true or false"),
    ("features.num_workers=-1", "features.num_workers=-1: expected auto or a whole number >= 0"),
    ("training.head_threads=0", "training.head_threads=0"),
    ("training.head_threads=many", "training.head_threads='many': expected auto, null or"),
    ("evaluation.tta=online", "evaluation.tta='online'"),
    ("evaluation.cam_per_class=0", "evaluation.cam_per_class=0"),
    ("evaluation.target_sensitivity=1.5", "evaluation.target_sensitivity=1.5: expected a sensitivity above 0"),
    ("evaluation.calibration=platt", "evaluation.calibration='platt': expected none or temperature"),
    ("evaluation.rank_by=accuracy", "evaluation.rank_by='accuracy': expected auto or a fold metric, e.g."),
    ("stain=macenko stain.fit_images=0", "stain.fit_images=0: expected a whole number of training images"),
])
def test_rules_name_the_key_and_what_it_expects(compose_cfg, override: str, message: str) -> None:
    with pytest.raises(LeukexpError, match=message.replace("[", r"\[").replace(".", r"\.")):
        check_rules(compose_cfg(*override.split()))


def test_tta_and_the_thesis_protocol_exclude_each_other(compose_cfg) -> None:
    with pytest.raises(LeukexpError, match="protocol=thesis"):
        check_rules(compose_cfg("evaluation.tta=flips", "protocol=thesis"))
    check_rules(compose_cfg("evaluation.tta=flips"))


def test_validation_accepts_the_defaults_and_refuses_one_changed_key(compose_cfg) -> None:
    """The same configs pass and fail by a single key: the checks look at values, not at which config it is."""
    for overrides in ((), ("features.batch_size=64", "features.num_workers=2", "training.head_threads=null"),
                      (*TINY_MODEL, "head=knn")):
        validate(compose_cfg(*overrides))  # raises on any mistake
        with pytest.raises(LeukexpError, match=r"^trainer\.max_epochs=0: expected a whole number of epochs"):
            validate(compose_cfg(*overrides, "trainer.max_epochs=0"))


def test_model_and_fusion_members_are_checked(compose_cfg, tmp_path) -> None:
    with pytest.raises(LeukexpError, match=r"model\.name='nope' is not a timm model"):
        check_model(compose_cfg("model=timm", "model.name=nope"))
    with pytest.raises(LeukexpError, match=r"model\.members\[timm\]\.name='\?\?\?'"):
        check_model(compose_cfg("model=concat", "model.members=[efficientnet_lite0,timm]"))
    with pytest.raises(LeukexpError, match="no such file"):
        check_model(compose_cfg("model=inception_v3", f"model.weights_file={tmp_path / 'none.pth'}"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["head.dropout=1"], "head.dropout=1"),
    (["head=svm", "head.kernel=cubic"], "head.kernel='cubic'"),
    (["head=svm", "head.calibration_folds=1"], "head.calibration_folds=1"),
    (["head=logreg", "head.estimator.max_iter=-1"], "'max_iter' parameter of LogisticRegression"),
])
def test_heads_check_their_own_arguments(compose_cfg, overrides: list[str], message: str) -> None:
    with pytest.raises(LeukexpError, match=message.replace(".", r"\.")):
        check_head(compose_cfg(*overrides))


def test_the_gpu_trainer_needs_a_cuda_device(compose_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LeukexpError, match=r"trainer\.accelerator=gpu: no CUDA device here; use trainer=default"):
        check_accelerator(compose_cfg("trainer=gpu"))
    check_accelerator(compose_cfg("trainer.accelerator=auto"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_accelerator(compose_cfg("trainer=gpu"))


def test_a_head_larger_than_memory_is_refused_without_allocating_it(compose_cfg, monkeypatch) -> None:
    import resource

    import leukexp.heads.base

    # 64 GiB free, whatever this machine has now: 1.2e9 parameters (~18 GiB to train) fit, 1e16 do not
    monkeypatch.setattr(leukexp.heads.base, "available_memory", lambda: 64 * 2**30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(LeukexpError, match=r"head\.hidden=\[100000000, 100000000\]: a head of .* parameters needs"):
        check_head(compose_cfg("head.hidden=[100000000,100000000]"))
    check_head(compose_cfg("head.hidden=[100000000]"))  # 1e9 stand-in parameters: checked on the meta device
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 500_000, f"peak memory grew by {grown} KiB: the stand-in head was allocated"


def test_a_stain_reference_and_an_external_set_are_checked_before_any_work(compose_cfg, tmp_path,
                                                                             make_folder) -> None:
    (tmp_path / "ref.png").write_text("no pixels here")
    with pytest.raises(LeukexpError, match=r"^stain\.reference=.*ref\.png: not an image"):
        validate(compose_cfg("stain=macenko", f"stain.reference={tmp_path / 'ref.png'}"))
    other = make_folder({"Benign": 1, "Pre": 1}, tmp_path / "lab")
    with pytest.raises(LeukexpError, match=r"^evaluation\.external: class folder 'Benign' is not a class"):
        validate(compose_cfg(f"evaluation.external={other}"))
    validate(compose_cfg("stain=reinhard", "evaluation.external=synthetic_b"))


def test_a_top_level_key_leukexp_does_not_read_is_named_in_a_warning(compose_cfg, caplog) -> None:
    validate(compose_cfg(*TINY_MODEL, "+lr=0.1"))
    assert "lr: not a leukexp setting, so it changes nothing" in caplog.text
    caplog.clear()
    validate(compose_cfg(*TINY_MODEL))
    assert "not a leukexp setting" not in caplog.text


def test_what_a_head_asks_of_the_bags_is_checked_before_any_run(compose_plan) -> None:
    from leukexp.data.fold_data import build_fold_data
    from leukexp.run.validation import check_against_data

    patients = ["data=synthetic_patients", "task=binary", "bags=images", "augmentation=none",
                "data.counts={ALL: 4, HLT: 4}", "data.cells_min=4", "data.cells_max=6", "fold.n_splits=2",
                "fold.val_fraction=0.5"]
    plan = compose_plan(*patients, "head=differential", "head.topk=7")
    with pytest.raises(LeukexpError, match=r"^head\.topk=7: larger than every training bag \(the largest holds 6"):
        check_against_data(plan, build_fold_data(plan))
    plan = compose_plan(*patients, "head=differential", "head.topk=3")
    check_against_data(plan, build_fold_data(plan))  # typed cells (ALL, HLT) and bags of 4-6: fine


def test_self_training_without_two_bag_classes_is_one_line_before_any_run(compose_plan) -> None:
    from types import SimpleNamespace

    from leukexp.run.validation import check_against_data

    plan = compose_plan("data=synthetic_patients", "bags=images", "head=vote", "head.labels=self")
    three = SimpleNamespace(bags=object(), classes=["ALL", "AML", "HLT"])
    with pytest.raises(LeukexpError, match=r"^head\.labels=self: self-training needs two bag classes .* has 3"):
        check_against_data(plan, three)
    check_against_data(plan, SimpleNamespace(bags=object(), classes=["ALL", "HLT"]))
