"""The torch head adapter: built from the head configs, trained by Lightning, best epoch kept, saved and reloaded."""

import os
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from conftest import Stub, Wide, blobs
from leukexp.heads.base import Head, HeadContext, Split
from leukexp.heads.mlp_network import MLPHead
from leukexp.heads.torch_head import TorchHead
from leukexp.run.settings import head_from_plan, train_settings
from leukexp.vocabulary import TRAIN_ACC, TRAIN_LOSS, VAL_ACC, VAL_LOSS


@pytest.mark.parametrize(("name", "widths"), [("mlp1", [128, 3]), ("mlp3", [1024, 512, 128, 3]),
                                              ("mlp3_dropout", [1024, 512, 128, 3])])
def test_head_configs_build_torch_heads(compose_plan, name: str, widths: list[int]) -> None:
    head = head_from_plan(compose_plan(f"head={name}"), Stub(), num_classes=3, class_weights=None)
    assert isinstance(head, TorchHead) and isinstance(head, Head)
    assert [m.out_features for m in head.network.modules() if isinstance(m, nn.Linear)] == widths
    assert head.network_config["dropout"] == (0.5 if name == "mlp3_dropout" else 0.0)


def test_binary_task_has_one_logit_unless_asked_for_two(compose_plan) -> None:
    one = head_from_plan(compose_plan("head=mlp1"), Stub(), num_classes=2, class_weights=None)
    two = head_from_plan(compose_plan("head=mlp1", "training.binary_outputs=2"), Stub(), num_classes=2,
                           class_weights=None)
    assert one.network[-1].out_features == 1 and one.single_logit
    assert two.network[-1].out_features == 2 and not two.single_logit
    probs = one.predict_proba(np.zeros((4, 8), np.float32))
    assert probs.shape == (4, 2) and np.allclose(probs.sum(1), 1)


def test_training_keeps_the_best_validation_epoch_and_learns(compose_plan) -> None:
    import torch

    torch.manual_seed(0)
    plan = compose_plan("head=mlp1", "trainer.max_epochs=6")
    x, y = blobs()
    vx, vy = blobs(seed=1)
    head = head_from_plan(plan, Stub(), num_classes=3, class_weights=None)
    history = head.fit(Split(y, x), Split(vy, vx))
    assert list(history["epoch"]) == [0, 1, 2, 3, 4, 5]
    metrics = history[[TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC]]
    assert metrics.notna().all().all() and history[TRAIN_LOSS].iloc[-1] < history[TRAIN_LOSS].iloc[0]
    assert head.best_epoch == int(history[VAL_ACC].to_numpy().argmax())
    assert (head.predict_proba(vx).argmax(1) == vy).mean() == pytest.approx(history[VAL_ACC].max())
    assert (head.predict_proba(vx).argmax(1) == vy).mean() > 0.9


def test_early_stopping_stops_early(compose_plan) -> None:
    plan = compose_plan("head=mlp1", "trainer.max_epochs=40", "training.early_stopping_patience=2")
    x, y = blobs()
    history = head_from_plan(plan, Stub(), 3, None).fit(Split(y, x), Split(y, x))
    assert len(history) < 40


def test_save_and_load_give_the_same_probabilities(compose_plan, tmp_path: Path) -> None:
    x, y = blobs()
    head = head_from_plan(compose_plan("head=mlp3_dropout", "trainer.max_epochs=2"), Stub(), 3, None)
    head.fit(Split(y, x), Split(y, x))
    spec = head.save(tmp_path)
    assert spec["kind"] == "torch" and (tmp_path / spec["weights"]).is_file()
    again = TorchHead.load(tmp_path, spec)
    assert np.allclose(again.predict_proba(x), head.predict_proba(x))


def test_train_settings_are_typed(compose_plan) -> None:
    settings = train_settings(compose_plan("training.batch_size=16", "training.early_stopping_patience=3"))
    assert (settings.batch_size, settings.early_stopping_patience, settings.seed) == (16, 3, 42)
    assert HeadContext(8, 2, single_logit=True).num_outputs == 1


def test_head_threads_come_from_the_training_config(compose_plan) -> None:
    assert train_settings(compose_plan()).cpu_threads == "auto"
    assert train_settings(compose_plan("training.head_threads=3")).cpu_threads == 3
    assert train_settings(compose_plan("training.head_threads=null")).cpu_threads is None


def test_auto_head_threads_give_wide_heads_every_job_thread_and_small_heads_one() -> None:
    from leukexp.heads.base import PARALLEL_HEAD_PARAMETERS, head_threads

    mlp1 = sum(p.numel() for p in MLPHead(1280, 5, hidden=[128]).parameters())
    mlp3 = sum(p.numel() for p in MLPHead(1280, 5, hidden=[1024, 512, 128]).parameters())
    assert mlp1 < PARALLEL_HEAD_PARAMETERS <= mlp3
    assert head_threads("auto", mlp1, job_threads=2) == 1
    assert head_threads("auto", mlp3, job_threads=2) == 2
    assert head_threads("auto", mlp3, job_threads=1) == 1  # one thread per job under a 2-job launcher
    assert head_threads(4, mlp1, job_threads=2) == 4
    assert head_threads(None, mlp3, job_threads=2) is None


def test_a_wide_head_trains_on_the_job_threads_and_restores_them(compose_plan, monkeypatch) -> None:
    import torch

    from leukexp.heads import torch_head

    seen: list[int | None] = []
    original = torch_head.torch_threads

    def spy(count: int | None):
        seen.append(count)
        return original(count)

    monkeypatch.setattr(torch_head, "torch_threads", spy)
    features, labels = blobs(n=60, width=1280)
    before = torch.get_num_threads()
    for hidden in ([4], [1024, 512]):
        head = head_from_plan(compose_plan("head=mlp3", f"head.hidden={hidden}", "trainer.max_epochs=1"), Wide(),
                          num_classes=3, class_weights=None)
        head.fit(Split(labels, features), Split(labels, features))
    assert seen == [1, before]
    assert torch.get_num_threads() == before



def test_in_memory_training_counts_gpus_without_nvml_and_restores_the_setting(compose_plan, monkeypatch) -> None:
    from lightning.pytorch.callbacks import Callback

    from leukexp.heads import torch_head

    monkeypatch.setenv(torch_head.NVML_CUDA_CHECK, "1")  # as Lightning's import leaves it
    seen: list[str | None] = []

    class Record(Callback):
        def on_train_batch_start(self, *args: object, **kwargs: object) -> None:
            seen.append(os.environ.get(torch_head.NVML_CUDA_CHECK))

    head = head_from_plan(compose_plan("head=mlp1", "trainer.max_epochs=2"), Stub(), num_classes=3, class_weights=None)
    make_trainer = head.context.training.trainer
    head.context.training.trainer = lambda callbacks, **kwargs: make_trainer(callbacks=[*callbacks, Record()],
                                                                             **kwargs)
    x, y = blobs()
    head.fit(Split(y, x), Split(y, x))
    assert len(seen) == 2 and set(seen) == {None}  # one block of steps per epoch, none with the NVML check
    assert os.environ[torch_head.NVML_CUDA_CHECK] == "1"
    with torch_head.runtime_cuda_check(active=False):
        assert os.environ[torch_head.NVML_CUDA_CHECK] == "1"
