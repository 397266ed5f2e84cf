"""Frozen `keras.applications` models on TensorFlow: the study's own Inception-V3 family, any application by name."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leukexp.backbones.base import Backbone, resize
from leukexp.errors import LeukexpError

log = logging.getLogger(__name__)

# input side of applications whose ImageNet weights expect another size than 224
DEFAULT_SIZES = {"InceptionV3": 299, "InceptionResNetV2": 299, "Xception": 299, "NASNetLarge": 331,
                 "EfficientNetB1": 240, "EfficientNetB2": 260, "EfficientNetB3": 300}


def import_keras() -> Any:
    """Keras 3 on the TensorFlow backend, or a one-line error naming the extra to install."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # torch's compiler stack (triton, reached through timm and torchvision) segfaults when it is first loaded after
    # TensorFlow's libraries: load it first
    import timm  # noqa: F401
    import torch._dynamo  # noqa: F401

    try:
        import keras
    except ImportError as error:
        raise LeukexpError("model=keras needs TensorFlow: pip install 'leukexp[keras]'") from error
    return keras


@dataclass(frozen=True)
class KerasPreprocess:
    """Resize the whole image and apply the application's own `preprocess_input` (returned channels-first).

    Args:
        input_size: (channels, height, width).
        module: the `keras.applications` module whose `preprocess_input` applies (e.g. `inception_v3`).
    """

    input_size: tuple[int, int, int]
    module: str
    interpolation: str = "bilinear"
    _function: Any = field(default=None, compare=False, repr=False)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """8-bit RGB (H, W, 3) -> the application's input, as a float tensor (3, H', W')."""
        return self.normalize(torch.from_numpy(self.resize(image))[None])[0]

    def resize(self, image: np.ndarray) -> np.ndarray:
        """8-bit RGB (H, W, 3) -> 8-bit RGB at the input size."""
        _, height, width = self.input_size
        return resize(image, height, width, self.interpolation)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """8-bit (N, H, W, 3) -> the application's `preprocess_input`, as float (N, 3, H, W) on the CPU."""
        array = images.cpu().numpy().astype(np.float32)
        array = np.asarray(self._preprocess_input()(array), dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for worker processes without the loaded Keras function (each process loads its own)."""
        return {"input_size": self.input_size, "module": self.module, "interpolation": self.interpolation}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from `__getstate__`'s fields."""
        for key, value in {**state, "_function": None}.items():
            object.__setattr__(self, key, value)

    def _preprocess_input(self) -> Any:
        if self._function is None:
            import_keras()
            object.__setattr__(self, "_function", importlib.import_module(self.module).preprocess_input)
        return self._function

    def describe(self) -> str:
        """A stable text form, part of the feature-cache key."""
        return f"keras|{self.input_size}|{self.module}|{self.interpolation}"


class KerasBackbone(Backbone, kind="keras"):
    """A `keras.applications` model with `include_top=False, pooling="avg"`, frozen, on TensorFlow.

    Weights come from, in order: `weights_file` (a local `.h5`/`.keras`/`.weights.h5` of the same
    application without its top), `imagenet` from Keras's servers when online, or random
    (`pretrained: false`, logged loudly).

    Args:
        application: the `keras.applications` class name, e.g. `InceptionV3`, `ResNet50`, `EfficientNetB0`.
        pretrained: load ImageNet weights.
        weights_file: local weights file.
        input_size: square input side (default: the application's ImageNet size).
        label: short name for tags and reports.
    """

    @classmethod
    def check_config(cls, config: dict[str, Any], key: str) -> None:
        """A weights file that exists; `stages` and `pooling` refused (Keras applications give their last stage,
        average-pooled, only)."""
        super().check_config(config, key)
        stages, pooling = config.get("stages"), config.get("pooling", "avg")
        if stages is not None or pooling != "avg":
            name = f"{key}.stages" if stages is not None else f"{key}.pooling"
            raise LeukexpError(f"{name}={stages if stages is not None else pooling!r}: Keras applications give their"
                               " last stage, average-pooled, only; use a timm model (model=timm model.name=...) for"
                               " multi-stage features or other pooling")

    def __init__(self, application: str = "InceptionV3", pretrained: bool = True,
                 weights_file: str | Path | None = None, input_size: int | None = None,
                 label: str | None = None, stages: object = None, pooling: str = "avg") -> None:
        self.check_config({"stages": stages, "pooling": pooling}, "model")
        keras = import_keras()
        factory = getattr(keras.applications, str(application), None)
        if not callable(factory):
            raise LeukexpError(f"model.application={application!r} is not in keras.applications"
                               " (e.g. InceptionV3, ResNet50, EfficientNetB0)")
        self.application = str(application)
        self.label = label or f"keras_{self.application.lower()}"
        self.pretrained = bool(pretrained)
        self.weights_file = str(weights_file) if weights_file else None
        side = int(input_size or DEFAULT_SIZES.get(self.application, 224))
        self.model = _create(keras, factory, self.application, self.pretrained, self.weights_file, side)
        self.model.trainable = False
        self.num_features = int(self.model.output_shape[-1])
        self.preprocess = KerasPreprocess((3, side, side), factory.__module__)
        self.precision = "fp32"
        self._fingerprint: str | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (N, 3, H, W) -> pooled features (N, num_features), float32."""
        batch = images.detach().cpu().numpy().transpose(0, 2, 3, 1)
        features = self.model(batch, training=False)
        return torch.from_numpy(np.array(features, dtype=np.float32))

    @property
    def fingerprint(self) -> str:
        """Hash of the application, preprocessing and weight values."""
        if self._fingerprint is None:
            digest = hashlib.sha1(usedforsecurity=False)
            digest.update(f"keras|{self.application}|{self.preprocess.describe()}".encode())
            for weights in self.model.get_weights():
                digest.update(np.ascontiguousarray(weights).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def reference(self) -> dict[str, object]:
        """What a saved head needs to rebuild this backbone."""
        return {"kind": "keras", "application": self.application, "label": self.label,
                "pretrained": self.pretrained, "weights_file": self.weights_file,
                "fingerprint": self.fingerprint, "input_size": list(self.preprocess.input_size)}


def _create(keras: Any, factory: Any, application: str, pretrained: bool, weights_file: str | None,
            side: int) -> Any:
    shape = (side, side, 3)
    if not pretrained:
        log.warning("model %s: RANDOM weights (pretrained=false): features are meaningless for a real study",
                    application)
        return _build(factory, application, shape, None)
    if weights_file:
        path = Path(weights_file).expanduser()
        if not path.is_file():
            raise LeukexpError(f"model.weights_file={path}: no such file; give the application's .h5 or .keras"
                               " weights without its top (e.g. *_notop.h5)")
        model = _build(factory, application, shape, None)
        try:
            model.load_weights(str(path))
        except Exception as error:  # h5py and Keras raise many kinds for a file that does not fit
            raise LeukexpError(f"model.weights_file={path}: does not fit keras {application} without its top"
                               f" ({type(error).__name__})") from error
        return model
    try:
        socket.getaddrinfo("storage.googleapis.com", 443)
    except OSError as error:
        raise LeukexpError(
            f"model keras {application}: no local weights and Keras's weight server cannot be reached;"
            " download the *_notop.h5 file elsewhere and pass model.weights_file=PATH,"
            " or set model.pretrained=false for a random init") from error
    return _build(factory, application, shape, "imagenet")


def _build(factory: Any, application: str, shape: tuple[int, int, int], weights: str | None) -> Any:
    try:
        return factory(include_top=False, pooling="avg", weights=weights, input_shape=shape)
    except ValueError as error:
        raise LeukexpError(f"model keras {application}: {str(error).splitlines()[0][:200]}"
                           " (model.input_size may be too small)") from error
