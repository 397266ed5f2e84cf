"""Image reading: formats, bit depths, channel counts, bad files."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import claiming_png, write_image
from leukexp.data.io import BadImageError, is_image_file, read_image, to_rgb8


@pytest.mark.parametrize(("ext", "channels", "dtype"), [
    (".png", 1, np.uint8), (".png", 3, np.uint16), (".png", 4, np.uint8), (".tif", 3, np.uint16),
    (".bmp", 3, np.uint8), (".jpg", 3, np.uint8), (".tiff", 1, np.uint16),
])
def test_reads_any_depth_and_channels_as_rgb8(tmp_path: Path, ext: str, channels: int, dtype: type) -> None:
    path = write_image(tmp_path / f"image{ext}", seed=1, size=20, channels=channels, dtype=dtype)
    image = read_image(path)
    assert image.shape == (20, 20, 3)
    assert image.dtype == np.uint8


def test_bgr_is_converted_to_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    assert read_image(tmp_path / "blue.png")[0, 0].tolist() == [0, 0, 255]


def test_sixteen_bit_scales_to_eight_bit() -> None:
    grey = np.full((2, 2), 65535, np.uint16)
    assert to_rgb8(grey)[0, 0].tolist() == [255, 255, 255]


def test_extension_matching_ignores_case(tmp_path: Path) -> None:
    path = write_image(tmp_path / "cell.Jpg", seed=2)
    assert is_image_file(path)
    assert not is_image_file(tmp_path / "notes.txt")


def test_zero_byte_file_is_named_in_the_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BadImageError, match=r"empty\.png: the file is empty"):
        read_image(empty)


def test_corrupt_file_is_named_in_the_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not really a jpeg")
    with pytest.raises(BadImageError, match=r"corrupt\.jpg: not a readable image"):
        read_image(corrupt)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.zeros((20, 60, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = read_image(tmp_path / "phone.jpg")
    assert image.shape == (60, 20, 3), "displayed upright: taller than wide"
    assert image[:10].mean() > 200 and image[-10:].mean() < 50, "the band is now at the top"


def test_misnamed_and_multi_frame_files_are_named(tmp_path: Path) -> None:
    from PIL import Image

    from leukexp.data.io import image_notes

    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 120, 240)]
    frames[0].save(tmp_path / "anim.png", format="GIF", save_all=True, append_images=frames[1:])
    data = (tmp_path / "anim.png").read_bytes()
    notes = image_notes(data, tmp_path / "anim.png")
    assert any("is a GIF file named .png" in n for n in notes)
    assert any("an animated GIF of 3 frames; only the first frame is used" in n for n in notes)
    assert read_image(tmp_path / "anim.png").shape == (16, 16, 3)
    write_image(tmp_path / "plain.png", 1)
    assert image_notes((tmp_path / "plain.png").read_bytes(), tmp_path / "plain.png") == []


def test_an_image_stating_too_many_pixels_is_refused_from_its_header(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import leukexp.data.io as io_module

    path = tmp_path / "field.png"
    path.write_bytes(claiming_png(20_000, 20_000))
    assert io_module.header_size(path.read_bytes()) == (20_000, 20_000)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded before its size was checked"))
    with pytest.raises(BadImageError, match=r"field\.png: 20,000 x 20,000 pixels \(400 M\) is more than"
                                            r" data\.max_pixels=100,000,000"):
        read_image(path)
    monkeypatch.undo()
    _, jpeg = cv2.imencode(".jpg", np.zeros((30, 50, 3), np.uint8))
    assert io_module.header_size(jpeg.tobytes()) == (50, 30)
    with pytest.raises(BadImageError, match="max_pixels=1,000"):
        io_module.decode_image(jpeg.tobytes(), "small.jpg", max_pixels=1_000)
    assert io_module.decode_image(jpeg.tobytes(), "small.jpg").shape == (30, 50, 3)
