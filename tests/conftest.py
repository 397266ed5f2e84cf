"""Shared fixtures: tiny generated image folders and composed Hydra configs in temporary folders."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hydra import compose as compose_config
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from leukexp.config.compose import config_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ALL4CLASS = SHARED_DATA / "all4class"

needs_shared_data = pytest.mark.skipif(not ALL4CLASS.is_dir(), reason=f"the real images are not at {ALL4CLASS}")

# a tiny random-weight backbone and a tiny synthetic data set: fast, for tests where weights do not matter
TINY_MODEL = ["model=timm", "model.name=test_efficientnet", "model.pretrained=false", "model.input_size=64"]
TINY_DATA = ["data.counts={ALL: 6, AML: 6, CLL: 6, CML: 6, HLT: 6}", "data.image_size=64"]


def blobs(n: int = 60, classes: int = 3, width: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable Gaussian blobs around fixed centres (the seed draws the noise): features and labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = np.random.default_rng(1234).normal(0, 4, (classes, width))
    return (centres[labels] + rng.normal(0, 1, (len(labels), width))).astype(np.float32), labels


class Stub:
    """A stand-in backbone: only the feature width matters to a head."""

    num_features = 8


class Wide(Stub):
    """A stand-in backbone as wide as EfficientNet-Lite0."""

    num_features = 1280


def claiming_png(width: int, height: int) -> bytes:
    """A 1 KB PNG whose header states `width` x `height` (its data holds 8 x 8 pixels): a decompression bomb's
    header without its gigabytes."""
    import struct
    import zlib

    _, encoded = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(encoded.tobytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def write_image(path: Path, seed: int, size: int = 32, channels: int = 3, dtype: type = np.uint8) -> Path:
    """Write a random image with OpenCV (distinct content per seed)."""
    rng = np.random.default_rng(seed)
    peak = 65535 if dtype == np.uint16 else 255
    shape = (size, size) if channels == 1 else (size, size, channels)
    image = rng.integers(0, peak, shape, endpoint=True).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def smear_cell(rng: np.random.Generator, height: int, width: int, tint: int) -> np.ndarray:
    """A small RGB picture of one stained cell on pale plasma, `tint` (0-2) raising one channel per class."""
    image = np.full((height, width, 3), (200, 190, 220), np.uint8)
    centre = (width // 2 + int(rng.integers(-3, 4)), height // 2 + int(rng.integers(-3, 4)))
    cv2.circle(image, centre, int(min(height, width) * rng.uniform(0.2, 0.35)),
               tuple(int(c) for c in rng.integers(60, 160, 3)), -1)
    image = np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    image[..., tint] = np.clip(image[..., tint].astype(int) + 40, 0, 255)
    return image


# class folders named as real sets name them, one with characters MLflow refuses in keys
MESSY_CLASSES = ("ALL", "Band (BNE)+")
MESSY_SIZES = [(48, 48), (64, 40), (30, 72), (90, 90), (57, 61)]


def make_messy_folder(root: Path, per_class: int = 8) -> Path:
    """Real data's quirks in one folder: several sizes and aspect ratios per class, 16-bit and RGBA PNG, TIFF, an
    animated GIF named `.png`, an EXIF-rotated JPEG, a duplicate, and a class folder named `Band (BNE)+`."""
    from PIL import Image

    for index, name in enumerate(MESSY_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(index)
        for i in range(per_class):
            cv2.imwrite(str(folder / f"c{i}.png"), smear_cell(rng, *MESSY_SIZES[i % len(MESSY_SIZES)], index))
        cv2.imwrite(str(folder / "deep16.png"), smear_cell(rng, 50, 70, index).astype(np.uint16) * 257)
        cv2.imwrite(str(folder / "alpha.png"), np.dstack([smear_cell(rng, 44, 52, index), np.full((44, 52), 255,
                                                                                                    np.uint8)]))
        cv2.imwrite(str(folder / "scan.tif"), smear_cell(rng, 66, 58, index))
        frames = [Image.fromarray(smear_cell(rng, 40, 40, index)) for _ in range(3)]
        with open(folder / "anim.png", "wb") as handle:
            frames[0].save(handle, format="GIF", save_all=True, append_images=frames[1:])
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(smear_cell(rng, 40, 80, index)).save(folder / "rotated.jpg", exif=exif.tobytes())
        (folder / "copy.png").write_bytes((folder / "c0.png").read_bytes())
    return root


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Build `root/<class>/<n images>` from {class: n}; images differ in content."""

    def build(counts: dict[str, int], root: Path | None = None, ext: str = ".png") -> Path:
        root = root or tmp_path / "images"
        seed = 0
        for label, count in counts.items():
            for index in range(count):
                seed += 1
                write_image(root / label / f"{label}_{index:02d}{ext}", seed)
        return root

    return build


def compose(root: Path, *overrides: str, output_dir: Path | None = None) -> DictConfig:
    """Compose `train.yaml` with overrides, rooted in `root`, as a Hydra run would see it."""
    output_dir = output_dir or root / "outputs"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose_config("train", overrides=[f"paths.root_dir={root}", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.shared_data_dir = str(SHARED_DATA)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in a real run: the task sees its config without the hydra node
    return cfg


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose `train.yaml` with overrides, rooted in a temporary folder, as a Hydra run would see it."""

    def build(*overrides: str, root: Path | None = None) -> DictConfig:
        return compose(root or tmp_path, *overrides)

    yield build
    GlobalHydra.instance().clear()


# a small real study: EfficientNet-Lite0 with its real weights (deterministic on reload) at 64 px
STUDY = ["model.input_size=64", "data.counts={ALL: 8, HLT: 8}", "data.image_size=64", "task=binary",
         "augmentation=none", "trainer.max_epochs=3", "fold.n_splits=2", "mlflow.experiment_name=study"]


@pytest.fixture(scope="session")
def study_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding a finished study: efficientnet_lite0 x {mlp1, svm} x 2 folds, run folders under outputs/."""
    from leukexp.run.pipeline import train

    root = tmp_path_factory.mktemp("study")
    for head in ("mlp1", "svm"):
        for fold in ("f0", "f1"):
            train(compose(root, *STUDY, f"head={head}", f"fold={fold}", output_dir=root / "outputs" / f"{head}-{fold}"))
    GlobalHydra.instance().clear()
    return root


# fixtures that train or load a large model before a test can start: a test using one is slow, whatever it does
SLOW_FIXTURES = {"study_store", "inception"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a slow fixture `slow`, so that `-m "not slow"` (make test-fast) skips it; the
    tests of one such fixture run on one pytest-xdist worker (`--dist loadgroup`), which builds it once."""
    for item in items:
        slow = sorted(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
        if slow:
            item.add_marker(pytest.mark.slow)
            if not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(slow[0]))


@pytest.hookimpl(tryfirst=True)  # after every collection hook (pytest-xdist names the groups in one), before the run
def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `--dist loadgroup`, stop at once if the groups did not take: tests of one machine-wide engine (a Slurm
    or Ray cluster) on two workers would stop each other's cluster. (pytest-xdist 3.8 names a group by rewriting
    `item._nodeid`, which pytest 9.2 no longer reads: hence `pytest<9.2` in the dev extra.)"""
    if not getattr(session.config.option, "loadgroup", False):  # set in pytest-xdist's workers
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist could not group {lost[0]} (and {len(lost) - 1} more) with this"
                                " pytest: install the dev extra's pytest (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def command_server() -> Iterator[object]:
    """One preloaded command server per pytest worker (`tests/forkserver.py`): a leukexp command as a real process
    without the seconds of imports each one would pay. For commands run to their end; a test that signals a command's
    process group mid-run starts it with `subprocess`."""
    from forkserver import CommandServer

    with CommandServer() as server:
        yield server


# a real MLflow tracking server for the tests that log over HTTP
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, port: int, backend: str | None = None) -> subprocess.Popen:
    """A real MLflow tracking server on localhost, answering /health (`backend`: an existing store's URI)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend or f"sqlite:///{root}/server.db", "--artifacts-destination",
         str(root / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise AssertionError("the MLflow server did not start")


def stop(server: subprocess.Popen) -> None:
    """Kill the server and its workers (its whole process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(30)



@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server for a module's tests (the job engines' tests log to it over HTTP): its URI."""
    port = free_port()
    process = start_server(tmp_path_factory.mktemp("server"), port)
    yield f"http://127.0.0.1:{port}"
    stop(process)

def plan_of(cfg: DictConfig):
    from leukexp.config.plan import RunPlan
    from leukexp.run.validation import validate

    validate(cfg)
    return RunPlan.from_config(cfg)


@pytest.fixture
def compose_plan(compose_cfg: Callable[..., DictConfig]) -> Callable[..., object]:
    """Compose `train.yaml` with overrides (as `compose_cfg`) and read it into the run plan, as a run's door does."""

    def build(*overrides: str, root: Path | None = None) -> object:
        return plan_of(compose_cfg(*overrides, root=root))

    return build


class PerImage(SimpleNamespace):
    """The parts of a fold's data the steps read, for samples scored one by one."""

    def __init__(self, samples: object, classes: list[str], positive: str | None) -> None:
        super().__init__(samples=samples, classes=classes, task=SimpleNamespace(positive_class=positive), bags=None)

    def labels(self, name: str) -> np.ndarray:
        return getattr(self.samples, name)["label_index"].to_numpy()

    def offsets(self, name: str) -> None:
        return None

    def instance_labels(self, name: str) -> None:
        return None

    def instance_types(self, name: str) -> None:
        return None
