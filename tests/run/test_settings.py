"""From config to objects: the backbone placed as `features.*` says, typed training settings."""

from conftest import TINY_MODEL
from leukexp.run.settings import backbone_from_plan, train_settings


def test_backbone_precision_follows_the_features_config(compose_plan) -> None:
    fp32 = backbone_from_plan(compose_plan(*TINY_MODEL))
    bf16 = backbone_from_plan(compose_plan(*TINY_MODEL, "features.precision=bf16"))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert fp32.device.type == "cpu"


def test_trainer_is_built_with_callbacks_later(compose_plan) -> None:
    settings = train_settings(compose_plan("trainer.max_epochs=3"))
    trainer = settings.trainer(callbacks=[], enable_progress_bar=False)
    assert trainer.max_epochs == 3
