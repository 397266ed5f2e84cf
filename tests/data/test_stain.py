"""Stain normalization: fitted targets, the second lab's images brought back, saved state, odd images."""

from pathlib import Path

import numpy as np
import pytest

from leukexp.data.stain import Macenko, NoStain, Reinhard, read_reference, stain_from_state, to_state
from leukexp.data.synthetic import generate_image
from leukexp.errors import LeukexpError

CLASSES = ("ALL", "AML", "CLL", "CML", "HLT")


def lab(domain: str, count: int = 3) -> list[np.ndarray]:
    return [generate_image(label, index, size=96, domain=domain) for label in CLASSES for index in range(count)]


def colour_gap(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    """Distance between the mean colours of two image sets."""
    return float(np.linalg.norm(np.mean([i.reshape(-1, 3).mean(0) for i in first], 0)
                                - np.mean([i.reshape(-1, 3).mean(0) for i in second], 0)))


@pytest.mark.parametrize("kind", [Macenko, Reinhard])
def test_normalization_brings_the_second_lab_towards_the_first(kind: type) -> None:
    normalizer = kind()
    normalizer.fit(lab("A"))
    other = lab("B")
    normalized = [normalizer(image) for image in other]
    assert all(image.shape == source.shape and image.dtype == np.uint8
               for image, source in zip(normalized, other, strict=True))
    assert colour_gap(normalized, lab("A")) < 0.6 * colour_gap(other, lab("A"))


@pytest.mark.parametrize("kind", [Macenko, Reinhard])
def test_saved_target_normalizes_exactly_as_the_fitted_one(kind: type) -> None:
    fitted = kind()
    fitted.fit(lab("A", 1))
    restored = stain_from_state(to_state(fitted))
    assert type(restored) is kind and restored.fingerprint() == fitted.fingerprint()
    image = generate_image("AML", 9, size=96, domain="B")
    assert np.array_equal(restored(image), fitted(image))
    other = kind()
    other.fit(lab("B", 1))
    assert other.fingerprint() != fitted.fingerprint(), "another target is another cache key"


@pytest.mark.parametrize("kind", [Macenko, Reinhard])
def test_an_image_without_stain_is_left_as_it_is(kind: type) -> None:
    normalizer = kind()
    normalizer.fit(lab("A", 1))
    blank = np.full((40, 40, 3), 250, np.uint8)
    assert np.array_equal(normalizer(blank), blank)


def test_no_normalization_changes_nothing_and_keeps_the_cache_keys() -> None:
    none = NoStain()
    image = generate_image("ALL", 0, size=64)
    assert none(image) is image and none.fingerprint() == "" and not none.active
    assert isinstance(stain_from_state(None), NoStain) and isinstance(stain_from_state({"name": "none"}), NoStain)
    with pytest.raises(LeukexpError, match=r"^stain: unknown kind 'vahadane' \(known: macenko, none, reinhard\)"):
        stain_from_state({"name": "vahadane", "target": {}})


def test_fitting_to_training_images_uses_an_even_sample(tmp_path: Path) -> None:
    import cv2

    paths = []
    for index, image in enumerate(lab("A", 2)):
        path = tmp_path / f"{index}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    few, many = Reinhard(fit_images=1), Reinhard(fit_images=10)
    few.fit_to_study(paths, [f"{i:03d}" for i in range(len(paths))])
    many.fit_to_study(paths, [f"{i:03d}" for i in range(len(paths))])
    assert few.fingerprint() != many.fingerprint()
    referenced = Reinhard(reference=paths[0])
    referenced.fit_to_study(paths[1:], [str(i) for i in range(len(paths) - 1)])
    assert referenced.fingerprint() == few.fingerprint(), "the first image in content order, as the reference"
    assert "reference" in referenced.describe() and "training images" in many.describe()


def test_a_reference_that_is_not_an_image_is_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not pixels")
    with pytest.raises(LeukexpError, match=r"stain.reference=.*notes.png: not an image"):
        read_reference(text)
    with pytest.raises(LeukexpError, match="no such file"):
        read_reference(tmp_path / "missing.png")


@pytest.mark.parametrize(("pixels", "why"), [
    (np.full((1, 1, 3), 128, np.uint8), "1 x 1 pixels is too small"),
    (np.full((64, 64, 3), 255, np.uint8), "it is of one colour"),
    (np.zeros((64, 64, 3), np.uint8), "it is of one colour"),
    (np.full((64, 64, 3), (200, 120, 180), np.uint8), "it is of one colour")])
def test_a_degenerate_reference_is_one_line(tmp_path: Path, pixels: np.ndarray, why: str) -> None:
    import cv2

    path = tmp_path / "reference.png"
    cv2.imwrite(str(path), pixels)
    with pytest.raises(LeukexpError, match=rf"stain.reference=.*reference.png: {why}.*well-stained"):
        read_reference(path)
    cv2.imwrite(str(path), cv2.cvtColor(generate_image("AML", 0, size=64), cv2.COLOR_RGB2BGR))
    assert read_reference(path).shape == (64, 64, 3), "a real smear is accepted"
