"""Ranks, devices and the rendezvous of a job launched by torchrun or by Slurm's srun (variables set by hand)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.errors import DeviceError
from actrec.pipeline import launcher
from actrec.pipeline.flow import FlowStore, resolve_device
from actrec.pipeline.stage import resolve_rank
from actrec.pipeline.store import Dataset, init_store, seal_shard, write_part

# what srun puts in the environment of task 5 of 8 (2 nodes x 4 tasks), and what a batch script itself sees
SRUN_TASK = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
             "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
BATCH_SCRIPT = {"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]",
                "SLURM_JOB_ID": "123456"}
TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"}
ALL = {*SRUN_TASK, *TORCHRUN, "MASTER_ADDR", "MASTER_PORT"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    """Set launcher variables by hand (any of these already set here are removed first)."""
    for name in ALL:
        monkeypatch.delenv(name, raising=False)

    def set_env(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    return set_env


def test_srun_task_variables_give_rank_world_and_local_rank(env) -> None:
    env(SRUN_TASK)
    assert launcher.launcher_rank() == (5, 8) and resolve_rank() == (5, 8)
    assert launcher.local_rank() == 1
    assert resolve_rank(0, 2) == (0, 2)  # --rank / --world-size win


def test_torchrun_variables_win_over_slurm_ones(env) -> None:
    env({**SRUN_TASK, **TORCHRUN})
    assert resolve_rank() == (3, 4) and launcher.local_rank() == 3


def test_a_batch_script_is_not_rank_0_of_its_allocation(env) -> None:
    """Outside a job step (no SLURM_STEP_NUM_TASKS) the allocation's SLURM_NTASKS does not split the job."""
    env(BATCH_SCRIPT)
    assert resolve_rank() == (0, 1) and launcher.local_rank() == 0
    assert launcher.rendezvous() == {}


def test_an_srun_task_gets_the_gpu_of_its_local_id_or_the_one_srun_bound_to_it(env, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    env({**SRUN_TASK, "SLURM_LOCALID": "3"})
    assert resolve_device(True) == "cuda:3"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task 1: the task sees its own
    assert resolve_device(True) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # 4 tasks per node on 2 GPUs: an error, not sharing
    env({"SLURM_LOCALID": "3"})
    with pytest.raises(DeviceError, match=r"local rank 3 has no GPU of its own: 2 CUDA device\(s\) visible"):
        resolve_device(True)


@pytest.mark.parametrize("nodelist, host", [("gpu[07-08]", "gpu07"), ("gpu[07-10,12],cpu3", "gpu07"),
                                            ("a1,b2", "a1"), ("single", "single"),
                                            ("rack[1-2]-node[03-04]", "rack1-node03"), ("n[5,1-3]", "n5")])
def test_first_host_of_a_slurm_host_list(nodelist: str, host: str) -> None:
    assert launcher.first_host(nodelist) == host


def test_the_rendezvous_is_task_0s_host_and_a_port_of_the_job_unless_set(env) -> None:
    env(SRUN_TASK)
    assert launcher.rendezvous() == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(29500 + 123456 % 1000)}
    env({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"})
    assert launcher.rendezvous() == {}


def _tiny_frames(root: Path, videos: int = 6) -> Path:
    """A raw frame store of short moving-noise videos (each frame the previous one shifted by a pixel)."""
    rng = np.random.default_rng(0)
    layout = init_store(root, "frames", {"encoding": "raw"}, num_shards=videos)
    for v in range(videos):
        base = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
        frames = np.stack([np.roll(base, i, axis=1) for i in range(4)])
        write_part(layout, v, f"v{v}", {"frames": Dataset(frames, chunks=(1, 24, 40, 3))},
                   {"num_frames": 4, "height": 24, "width": 40, "fps": 25.0, "encoding": "raw"})
        seal_shard(layout, v)
    return root


def test_srun_tasks_share_a_compute_flow_job_and_say_their_rank(env, tmp_path: Path) -> None:
    frames = _tiny_frames(tmp_path / "frames")
    light = ["--nscales", "1", "--warps", "1", "--inner-iterations", "3", "--outer-iterations", "1", "--quiet",
             "--compression", "gzip", "--videos-per-shard", "1"]
    done = {}
    for rank in (1, 0):
        env({**SRUN_TASK, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"})
        result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames), "--out", str(tmp_path / "flow"),
                                          *light])
        assert result.exit_code == 0, result.output
        assert f"compute-flow (rank {rank} of 2): " in result.output
        done[rank] = int(result.output.split(f"(rank {rank} of 2): ")[1].split(" done")[0])
    assert done[0] + done[1] == 6 and min(done.values()) > 0  # each task its own shards, together all
    with FlowStore(tmp_path / "flow") as store:
        assert len(store) == 6


def _free_port_job_id() -> int:
    """A job id whose derived port is free on this machine."""
    for job in range(launcher.PORT_SPAN):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", launcher.PORT_BASE + job))
            except OSError:
                continue
            return job
    raise RuntimeError("no free port in the launcher's range")


JOIN = """
import json, torch, torch.distributed as dist
from actrec.training.distributed import init_distributed, close_distributed
ctx = init_distributed(gpu=False)
total = torch.tensor([float(ctx.rank + 1)])
dist.all_reduce(total)
print(json.dumps([ctx.rank, ctx.world_size, float(total)]))
close_distributed(ctx)
"""


def test_training_processes_started_by_srun_join_without_master_variables(tmp_path: Path) -> None:
    """Two processes with only srun's variables (no MASTER_ADDR/MASTER_PORT) form a gloo group and all-reduce."""
    base = {k: v for k, v in os.environ.items() if k not in ALL}
    base.update(SRUN_TASK, SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NODELIST="localhost",
                SLURM_JOB_ID=str(_free_port_job_id()))
    procs = [subprocess.Popen([sys.executable, "-c", JOIN], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**base, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}) for r in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    assert sorted(json.loads(out.strip().splitlines()[-1]) for out, _ in outputs) == [[0, 2, 3.0], [1, 2, 3.0]]
