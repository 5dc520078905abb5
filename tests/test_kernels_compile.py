"""Every Triton kernel of the project compiles for an H100/H200 (sm_90a), on a machine without a GPU.

The interpreter tests (tests/test_triton_tvl1.py) check what the kernels compute, not that a GPU compiler accepts
them or what they cost: a kernel that only the interpreter runs once shipped (a constexpr reassigned in a loop of
the old median, rejected by the compiler). Here each launch of the GPU solver at compute-flow's 340x256 level
(:func:`actrec.pipeline.tvl1.kernel_table.level_launches`) is compiled as its launch would be, and read back with
the cuobjdump shipped in Triton's wheel: a compile error fails, and so does a step kernel that spills to a stack
(at every pyramid level: the image size is compiled in).
The full table (registers, SASS, bytes, roofline) is benchmarks/bench_kernels_static.py.
"""

from __future__ import annotations

import importlib

import pytest
import triton

from actrec.pipeline.tvl1 import compiled, kernel_table
from actrec.pipeline.tvl1.backend import PASSES_CONFIG, kernel_config
from actrec.pipeline.tvl1.step_config import StepConfig

LEVEL = (256, 340)
FINER, COARSER = (320, 425), (205, 272)  # neighbours, so that both resizes are compiled too


@pytest.fixture(scope="module")
def launches():
    """compute-flow's launches (the recommended configuration) and the other family of iteration kernels (one
    pass per iteration, or several: the configuration is a choice of the table)."""
    default = kernel_config()
    other = StepConfig() if default.k > 1 else PASSES_CONFIG
    found = kernel_table.level_launches(*LEVEL, finer=FINER, coarser=COARSER, medians=(5, 3))
    return found + [x for x in kernel_table.level_launches(*LEVEL, config=other) if x.per in ("iteration", "pass",
                                                                                             "replay")]


def test_every_kernel_of_the_project_is_in_the_table(launches):
    defined = {name for module in kernel_table.KERNEL_MODULES
               for name, value in vars(importlib.import_module(module)).items()
               if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel")}
    assert defined == {launch.fn.fn.__name__ for launch in launches}


@pytest.fixture(scope="module")
def compiled_kernels(launches) -> dict:
    """Each launch compiled for sm_90a (None where the compiler rejected it, with the error)."""
    found = {}
    for launch in launches:
        try:
            found[launch.name] = (launch, compiled.compile_sm90(launch.name, launch.fn, launch.args, launch.kwargs))
        except Exception as exc:  # noqa: BLE001  report every kernel, then fail
            cause = exc.__cause__ or exc
            found[launch.name] = (launch, f"{type(cause).__name__}: {cause}"[:500])
    return found


def test_every_kernel_compiles_for_sm90(compiled_kernels):
    failed = [err for _, err in compiled_kernels.values() if isinstance(err, str)]
    assert not failed, failed
    stacks = [f"{launch.name}: {comp.stack_bytes} bytes of stack, {comp.registers} registers"
              for launch, comp in compiled_kernels.values() if launch.role == "step" and comp.stack_bytes]
    assert not stacks, stacks
    assert all(comp.resident_warps > 0 for _, comp in compiled_kernels.values())  # every one can be launched


def test_the_aligned_pitch_gives_128_bit_loads_and_stores(compiled_kernels):
    """Rows of a multiple of 4 floats: the step kernel's tile loads and stores are 16-byte vectors."""
    ops = {compiled.opcode(s) for s in compiled_kernels["step"][1].sass}
    assert {"LDG.E.128", "STG.E.128"} <= ops


def test_the_median_network_stays_in_registers(compiled_kernels):
    """The selection network compares values in registers: no shared memory, no local memory, no barrier (the
    bitonic sort it replaces permuted its windows through shared memory at every stage)."""
    for name in ("median", "median3"):
        comp = compiled_kernels[name][1]
        ops = {compiled.opcode(s).split(".")[0] for s in comp.sass}
        assert not ops & {"LDS", "STS", "LDL", "STL", "BAR"}, (name, ops & {"LDS", "STS", "LDL", "STL", "BAR"})
        assert comp.stack_bytes == 0


def test_resident_warps_follow_the_h100_limits():
    assert compiled.resident_warps(255, 1024, 4) == 8  # the old step kernel: 2 programs of 4 warps
    assert compiled.resident_warps(128, 1024, 4) == 16
    assert compiled.resident_warps(32, 0, 4) == 64  # the warp slots bind
    assert compiled.resident_warps(32, 100 * 1024, 4) == 8  # shared memory binds: 2 programs


def test_step_kernels_need_no_stack_at_the_coarser_levels():
    """The image size is compiled in, so each pyramid level is its own kernel: ptxas once gave the one-pass kernel
    8 bytes of stack at the three coarsest levels and none at 340x256. Both families' iteration kernels at the
    levels the 340x256 fixture does not cover."""
    from actrec.pipeline.tvl1 import TVL1Params, pyramid_sizes

    p = TVL1Params()
    stacks = []
    for h, w in pyramid_sizes(*LEVEL, p.nscales, p.scale_step)[1:]:
        for config in (kernel_config(), PASSES_CONFIG if kernel_config().k == 1 else StepConfig()):
            for launch in kernel_table.level_launches(h, w, config=config):
                if launch.role == "step":
                    comp = compiled.compile_sm90(launch.name, launch.fn, launch.args, launch.kwargs)
                    if comp.stack_bytes:
                        stacks.append(f"{launch.name} at {w}x{h}: {comp.stack_bytes} bytes, {comp.registers} regs")
    assert not stacks, stacks
