"""The Triton kernels compiled for an H100/H200 (sm_90a) on a machine without a GPU, and what the compiled code says.

Triton compiles for a GPU target with no GPU present, and its wheel ships NVIDIA's ``cuobjdump`` and ``nvdisasm``
(``triton/backends/nvidia/bin``). :func:`compile_launch` compiles a kernel exactly as its launch would: the
arguments are specialised by Triton's own JIT binder (pointer alignment, integers divisible by 16), so the code
is the code the launch runs. From the cubin it reads the registers, stack, local and shared memory per thread
(:func:`resource_usage`) and the SASS (:func:`sass_instructions`); :func:`resident_warps` turns the resources into
the warps an H100 keeps resident per SM.

Used by ``benchmarks/bench_kernels_static.py`` (the static table and roofline) and the CI test that compiles every
kernel (tests/test_kernels_compile.py). Works with the Triton that ``scripts/setup_env.sh`` installs and with the
device image's Triton 3.6; the JIT internals it uses exist in both.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

TARGET = ("cuda", 90, 32)  # sm_90a (H100, H200), 32 threads per warp

# H100 / H200 SM limits (CUDA occupancy tables, compute capability 9.0)
REGISTERS_PER_SM = 65536
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SHARED_PER_SM = 228 * 1024
SHARED_RESERVED_PER_BLOCK = 1024  # the driver's reserve per resident block
REGISTER_GRANULE = 256  # registers are allocated per warp in units of 256


@dataclass(frozen=True)
class Compiled:
    """One kernel compiled for sm_90a: per-thread resources and the SASS instruction lines (NOP padding dropped)."""

    name: str
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    num_warps: int
    sass: tuple[str, ...]

    @property
    def resident_warps(self) -> int:
        return resident_warps(self.registers, self.shared_bytes, self.num_warps)


def _tools_dir() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_launch(fn, args: tuple, kwargs: dict):
    """Compile ``fn`` for sm_90a as ``fn[grid](*args, **kwargs)`` would be compiled; returns Triton's compiled
    kernel (``.asm["cubin"]``, ``.asm["ptx"]``, ``.metadata``). ``args`` may be CPU tensors: only their dtype and
    alignment matter."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget(*TARGET)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """``cuobjdump --dump-resource-usage`` of a one-kernel cubin: REG, STACK, SHARED, LOCAL (per thread/block)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(_tools_dir(), "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return {k: int(v) for k, v in found.items()}


def sass_instructions(cubin: bytes) -> tuple[str, ...]:
    """The SASS instructions of the cubin (``nvdisasm``), the kernel's own and its subroutines' (the IEEE division
    and square-root slow paths), without the NOPs that pad the code to its alignment. The kernels have no loops
    over pixels or iterations (they are unrolled), so this is what a thread issues per work item, every branch
    counted; a persistent kernel's loop over its work items runs its body once per item."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([os.path.join(_tools_dir(), "nvdisasm"), "-c", f.name], capture_output=True,
                             text=True, check=True).stdout
    lines = [m.group(1).strip() for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", out)]
    return tuple(s for s in lines if not s.startswith("NOP"))


def opcode(instruction: str) -> str:
    """The opcode of a SASS line, with its modifiers (``LDG.E.128``), after any predicate (``@P0``)."""
    parts = instruction.split()
    return parts[1] if parts[0].startswith("@") else parts[0]


def compile_sm90(name: str, fn, args: tuple, kwargs: dict) -> Compiled:
    """:func:`compile_launch`, then the resources and SASS of the result."""
    kernel = compile_launch(fn, args, kwargs)
    cubin = kernel.asm["cubin"]
    usage = resource_usage(cubin)
    return Compiled(name=name, registers=usage.get("REG", 0), stack_bytes=usage.get("STACK", 0),
                    local_bytes=usage.get("LOCAL", 0),
                    shared_bytes=max(usage.get("SHARED", 0), int(kernel.metadata.shared)),
                    num_warps=int(kernel.metadata.num_warps), sass=sass_instructions(cubin))


def resident_warps(registers: int, shared_bytes: int, num_warps: int) -> int:
    """Warps an H100 SM keeps resident for a kernel of ``num_warps`` warps per program using ``registers`` per
    thread and ``shared_bytes`` per program: whole programs, limited by the register file, shared memory, and the
    SM's warp and block slots."""
    per_warp = -(-max(registers, 1) * 32 // REGISTER_GRANULE) * REGISTER_GRANULE
    by_registers = REGISTERS_PER_SM // (per_warp * num_warps)
    by_shared = SHARED_PER_SM // (shared_bytes + SHARED_RESERVED_PER_BLOCK)
    blocks = min(by_registers, by_shared, MAX_BLOCKS_PER_SM, MAX_WARPS_PER_SM // num_warps)
    return blocks * num_warps
