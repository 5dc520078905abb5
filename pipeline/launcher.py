"""This process's place in a multi-process job, read from its launcher's variables: torchrun's, or Slurm's srun.

* torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; they win.
* srun sets, in every task it starts, ``SLURM_PROCID`` (the rank), ``SLURM_NTASKS`` (the world size) and
  ``SLURM_LOCALID`` (the rank on its node, hence its GPU). They are used when no torchrun variable is set and the
  process is a task of a job step (``SLURM_STEP_NUM_TASKS`` is set, by srun only): a batch script itself also
  sees ``SLURM_PROCID=0`` and the allocation's ``SLURM_NTASKS``, and must not take itself for rank 0 of N.
  So ``srun --ntasks-per-node 4 --gpus-per-node 4 actrec compute-flow --gpu ...`` shards a job over every task of
  the allocation. A task that srun bound to a single GPU (``--gpus-per-task 1``) sees just that one, as ``cuda:0``.
* Training under srun joins ``torch.distributed`` through ``MASTER_ADDR``/``MASTER_PORT``. When they are not set,
  :func:`rendezvous` derives them: the first host of the step's node list (where task 0 runs) and a port from the
  job id, the same in every task of the job. Set them to override (e.g. another free port).
"""

from __future__ import annotations

import os
import re
from typing import Mapping

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PORT_BASE = 29500  # torchrun's default port; a job uses PORT_BASE + job id % PORT_SPAN
PORT_SPAN = 1000


def slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task of an srun job step and no torchrun variable is set."""
    return (not any(name in env for name in TORCHRUN) and "SLURM_PROCID" in env
            and "SLURM_STEP_NUM_TASKS" in env)


def launcher_rank(env: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(rank, world size) from torchrun's variables, else srun's, else (0, 1)."""
    if slurm_step(env):
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", env["SLURM_STEP_NUM_TASKS"]))
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))


def local_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank on its machine: ``LOCAL_RANK`` (torchrun), else ``SLURM_LOCALID`` (srun), else 0."""
    if slurm_step(env):
        return int(env.get("SLURM_LOCALID", 0))
    return int(env.get("LOCAL_RANK", 0))


def device_index(local: int, visible: int, env: Mapping[str, str] = os.environ) -> int | None:
    """The CUDA device of local rank ``local`` among ``visible`` devices, or None when it has none of its own:
    the local rank's own device, or the only device of a task that srun bound to one GPU."""
    if 0 <= local < visible:
        return local
    if visible == 1 and slurm_step(env):
        return 0
    return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list (``gpu[07-10,12],cpu3`` -> ``gpu07``; ``r[1-2]-n[3-4]`` -> ``r1-n3``)."""
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], nodelist[:end])


def rendezvous(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``MASTER_ADDR`` and ``MASTER_PORT`` for ``torch.distributed`` in an srun step that did not set them (empty
    otherwise): task 0's host, the first of ``SLURM_STEP_NODELIST`` (``SLURM_JOB_NODELIST`` if absent), and port
    ``PORT_BASE + SLURM_JOB_ID % PORT_SPAN``."""
    if not slurm_step(env):
        return {}
    found = {}
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if "MASTER_ADDR" not in env and nodes:
        found["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in env:
        found["MASTER_PORT"] = str(PORT_BASE + int(env.get("SLURM_JOB_ID", 0)) % PORT_SPAN)
    return found
