"""The candidate configurations of the TV-L1 iterations compared from their compiled code (``bench_kernels_static.py
--configs``): tiles of the one-pass kernel and regions of the k-iterations-per-pass kernel, each compiled for sm_90a
at every level of the 340x256 pyramid and traced under the interpreter at 340x256, with the static roofline of the
iterations alone on the real pairs' counted work. Estimates from compiled code, not measured speeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from bench_kernels_static import BANDWIDTH, ISSUE, SMS, _events, interpreter_env

BENCH = str(Path(__file__).resolve().parent / "bench_kernels_static.py")

CANDIDATES = ((16, 64, 4, 1), (32, 64, 4, 1), (32, 32, 4, 1), (32, 128, 8, 1),  # one pass per iteration
              (32, 64, 16, 4), (32, 128, 16, 4), (64, 64, 16, 4))  # 4 iterations per pass: regions, halo of 4


TIE = 0.99  # rooflines within 1% are equal: the one-pass tiles differ only in their per-tile error bytes
L1_PER_SM = 256 * 1024  # an H100/H200 SM's combined L1 / shared-memory array, bytes


def scratch_per_sm(spec) -> int:
    """Bytes of scratch the persistent programs resident on one SM hold (k iterations per pass: 12 planes of the
    region per program, :data:`.triton_block.SLOTS` programs over the 132 SMs); 0 for one pass per iteration."""
    from actrec.pipeline.tvl1.triton_block import SLOTS

    bh, bw, _, k = spec
    return 0 if k == 1 else SLOTS // SMS * 12 * bh * bw * 4


def _candidate(spec) -> "object":
    from actrec.pipeline.tvl1.step_config import StepConfig

    bh, bw, warps, k = spec
    return StepConfig(bh, bw, warps, 128, k)  # 128 registers asked of ptxas (StepConfig.max_registers)


def trace_configs() -> None:
    """Footprints of each candidate's iteration launches at 340x256 (run under the interpreter)."""
    from actrec.pipeline.tvl1 import kernel_table

    found = {}
    for spec in CANDIDATES:
        for launch in kernel_table.level_launches(256, 340, config=_candidate(spec)):
            if launch.per in ("iteration", "pass"):
                found["x".join(map(str, spec)) + "/" + launch.name] = kernel_table.trace_bytes(launch).__dict__
    print(json.dumps(found))


def compare_configs(work: dict) -> dict:
    """Each candidate configuration of the iterations compiled at every level and traced at 340x256: resources,
    SASS and bytes per pixel-iteration, and the static roofline of the iterations alone on the real pairs' work
    (border tiles' idle lanes and, for k iterations per pass, the passes' replays included). The recommendation is
    the best H200 roofline (candidates within 1% of the best counted equal, then the best issue bound: the most
    slack for hiding latency) among the candidates with no stack and at most 128
    registers at every level whose scratch stays on chip: the k-pass kernels' 16 bytes per pixel-iteration hold
    only while the scratch regions of the programs resident on an SM fit its 256 KB L1 (:func:`scratch_per_sm`);
    beyond that the scratch traffic goes to L2 and DRAM, which the traced DRAM bytes do not count."""
    from actrec.pipeline.tvl1 import TVL1Params, compiled, kernel_table

    traces = json.loads(subprocess.run([sys.executable, BENCH, "--trace-configs"], env=interpreter_env(),
                                       capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    steps, held = np.array(work["steps"], dtype=float), np.array(work["held"], dtype=float)
    outer = (steps + held) / TVL1Params().inner_iterations
    found = {}
    for spec in CANDIDATES:
        name = "x".join(map(str, spec))
        instr = nbytes = 0.0
        comps = []
        for li, (h, w) in enumerate(tuple(s) for s in work["sizes"]):
            for launch in kernel_table.level_launches(h, w, config=_candidate(spec)):
                if launch.per not in ("iteration", "pass"):
                    continue
                comp = compiled.compile_sm90(launch.name, launch.fn, launch.args, launch.kwargs)
                runs = _events(launch.per, steps[:, li], held[:, li], outer[:, li], TVL1Params().warps,
                               launch.iterations)
                if launch.role == "step" and launch.per == "iteration":
                    runs = steps[:, li]
                fp = traces[f"{name}/{launch.name}"]
                instr += float(np.mean(runs)) * len(comp.sass) * 32 * comp.num_warps * launch.work_items
                nbytes += float(np.mean(runs)) * (fp["loaded"] + fp["stored"]) * (h * w) / (256 * 340)
                comps.append((launch, comp))
        step, top = next((launch, c) for launch, c in comps if launch.role == "step")
        px = step.pixels * step.iterations
        fp = traces[f"{name}/{step.name}"]
        found[name] = {
            "registers": max(c.registers for launch, c in comps if launch.role == "step"),
            "stack_bytes": max(c.stack_bytes for launch, c in comps if launch.role == "step"),
            "resident_warps_per_sm": top.resident_warps,
            "sass_per_pixel_iteration": round(len(top.sass) * 32 * top.num_warps
                                              / (step.tile_pixels * step.iterations), 1),
            "bytes_per_pixel_iteration": round((fp["loaded"] + fp["stored"]) / px, 2),
            "issue_pairs_per_s": round(ISSUE / instr), "h200_memory_pairs_per_s": round(BANDWIDTH["h200"] / nbytes),
            "h200_pairs_per_s": round(min(ISSUE / instr, BANDWIDTH["h200"] / nbytes))}
        found[name]["scratch_kb_per_sm"] = scratch_per_sm(spec) // 1024
    fits = {k: v for k, v in found.items() if v["stack_bytes"] == 0 and v["registers"] <= 128
            and v["resident_warps_per_sm"] > 0 and v["scratch_kb_per_sm"] * 1024 <= L1_PER_SM}
    pool = fits or found
    top = max(found[k]["h200_pairs_per_s"] for k in pool)
    near = [k for k in pool if found[k]["h200_pairs_per_s"] >= TIE * top]  # memory-bound equals: 0.01 B apart
    best = max(near, key=lambda k: found[k]["issue_pairs_per_s"])
    print("\ncandidate iterations (rows x columns x warps x iterations per pass; registers and stack the most of any "
          "level, SASS and bytes per pixel-iteration at 340x256; bounds of the iterations alone on the real pairs'"
          " work)")
    print("| config | regs | stack | res.warps/SM | scratch KB/SM | SASS/px-it | B/px-it | issue bound |"
          " H200 memory bound | H200 roofline |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, v in found.items():
        print(f"| {k}{' (recommended)' if k == best else ''} | {v['registers']} | {v['stack_bytes']} | "
              f"{v['resident_warps_per_sm']} | {v['scratch_kb_per_sm']} | {v['sass_per_pixel_iteration']} | "
              f"{v['bytes_per_pixel_iteration']} | {v['issue_pairs_per_s']} | {v['h200_memory_pairs_per_s']} | "
              f"{v['h200_pairs_per_s']} |")
    return {"configs": found, "recommended": best}
