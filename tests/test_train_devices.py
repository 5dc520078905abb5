"""The CUDA and DDP branches of training, taken on the CPU by simulating the CUDA runtime and the process group:
generator states under another set of visible GPUs, NCCL bound to the process's GPU, one host sync per log
iteration under DDP."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from actrec.training import distributed, trainer
from actrec.training.checkpoint import capture_rng, restore_rng
from actrec.training.config import resolve_config
from actrec.training.distributed import DistContext, init_distributed

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


class FakeCuda:
    """torch.cuda's generator API over ``visible`` devices, this process on device ``current``; like the real one,
    naming a device index beyond the visible ones raises IndexError."""

    def __init__(self, visible: int, current: int = 0) -> None:
        self.states = [torch.full((16,), index, dtype=torch.uint8) for index in range(visible)]
        self.current = current

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "FakeCuda":
        for name in ("is_available", "device_count", "current_device", "get_rng_state", "set_rng_state",
                     "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return len(self.states)

    def current_device(self) -> int:
        return self.current

    def _index(self, device: int | str | torch.device) -> int:
        index = device if isinstance(device, int) else torch.device(device).index
        index = self.current if index is None else index
        if index >= len(self.states):
            raise IndexError("tuple index out of range")  # torch.cuda.default_generators[index]
        return index

    def get_rng_state(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        return self.states[self._index(device)].clone()

    def set_rng_state(self, new_state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.states[self._index(device)] = new_state.clone()

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [state.clone() for state in self.states]

    def set_rng_state_all(self, new_states: list[torch.Tensor]) -> None:
        for index, state in enumerate(new_states):
            self.set_rng_state(state, index)


MARK = torch.full((16,), 77, dtype=torch.uint8)  # the generator state the training process had


@pytest.mark.parametrize("saved_visible, saved_device, resumed_visible, resumed_device", [
    (8, 0, 1, 0),  # trained with 8 visible GPUs, resumed under CUDA_VISIBLE_DEVICES=3
    (1, 0, 8, 3),  # trained with one visible GPU per process, resumed as LOCAL_RANK 3 of 8 visible
])
def test_cuda_generator_of_the_own_device_resumes_under_other_visible_gpus(
        monkeypatch, saved_visible, saved_device, resumed_visible, resumed_device):
    trained = FakeCuda(saved_visible, saved_device).install(monkeypatch)
    trained.states[saved_device] = MARK.clone()
    saved = capture_rng()
    resumed = FakeCuda(resumed_visible, resumed_device).install(monkeypatch)
    restore_rng(saved)
    assert torch.equal(resumed.states[resumed_device], MARK)
    others = [index for index in range(resumed_visible) if index != resumed_device]
    assert all(resumed.states[index][0] == index for index in others)  # other processes' devices untouched


def test_older_checkpoints_with_every_visible_devices_state_restore_the_own_one(monkeypatch):
    saved = {**capture_rng(), "cuda": [torch.full((16,), 50 + index, dtype=torch.uint8) for index in range(2)]}
    resumed = FakeCuda(visible=4, current=1).install(monkeypatch)
    restore_rng(saved)
    assert [int(state[0]) for state in resumed.states] == [0, 51, 2, 3]
    resumed = FakeCuda(visible=4, current=3).install(monkeypatch)
    restore_rng(saved)  # the old file has no state for device 3: it keeps its own
    assert [int(state[0]) for state in resumed.states] == [0, 1, 2, 3]


def test_cpu_only_checkpoint_leaves_cuda_generators_alone(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    saved = capture_rng()
    assert saved["cuda"].numel() == 0
    cuda = FakeCuda(2).install(monkeypatch)
    restore_rng(saved)
    assert [int(state[0]) for state in cuda.states] == [0, 1]


def test_nccl_is_bound_to_the_process_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(distributed, "resolve_rank", lambda: (1, 2))
    monkeypatch.setattr(distributed, "resolve_device", lambda gpu: "cuda:1" if gpu else "cpu")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: calls.append((args, kwargs)))
    ctx = init_distributed(gpu=True)
    assert ctx.device == torch.device("cuda:1")
    assert calls == [(("nccl",), {"rank": 1, "world_size": 2, "device_id": torch.device("cuda:1")})]
    calls.clear()
    init_distributed(gpu=False)
    assert calls == [(("gloo",), {"rank": 1, "world_size": 2})]  # gloo on CPUs takes no device


class _FakeGroup:
    """A process group of two identical processes: all_reduce doubles (both contribute the same), and counts."""

    def __init__(self) -> None:
        self.all_reduces = 0

    def all_reduce(self, tensor: torch.Tensor, op: object = None) -> None:
        self.all_reduces += 1
        tensor.mul_(2)

    def all_gather_object(self, gathered: list, value: object) -> None:
        gathered[:] = [value] * len(gathered)


class _FakeDDP(nn.Module):
    """DistributedDataParallel's interface without a process group."""

    def __init__(self, module: nn.Module, device_ids: object = None) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor) -> object:
        return self.module(*args)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def test_ddp_synchronises_the_host_on_log_iterations_only(monkeypatch, tmp_path):
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    group = _FakeGroup()
    monkeypatch.setattr(trainer, "init_distributed", lambda gpu: DistContext(0, 2, torch.device("cpu")))
    monkeypatch.setattr(trainer, "DistributedDataParallel", _FakeDDP)
    monkeypatch.setattr(distributed.dist, "all_reduce", group.all_reduce)
    monkeypatch.setattr(distributed.dist, "all_gather_object", group.all_gather_object)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)  # nothing to leave at the end
    config = resolve_config("stilt", overrides=fx.tiny_overrides(data, iterations=6, log_every=3))
    summary = trainer.train(config, tmp_path / "run", progress=False)
    assert summary.iteration == 6 and not summary.interrupted
    assert group.all_reduces == 2  # iterations 3 and 6: loss and stop flag in one all-reduce each
    assert torch.isfinite(torch.tensor(summary.last_loss))
