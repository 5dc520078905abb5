"""The TV-L1 Triton kernels as an H100/H200 would run them, from their compiled code: a static table and roofline.

No GPU is needed. Every kernel of the GPU solver (pipeline/tvl1/kernel_table.py) is compiled for sm_90a at the
sizes compute-flow launches (340x256 and its pyramid levels) with the launch's own specialisation, and read back:

- registers, stack and local bytes per thread, shared memory per program (``cuobjdump --dump-resource-usage``);
- warps per program and the warps an H100 SM keeps resident with those resources (64K registers, 64 warps,
  228 KB shared memory per SM);
- SASS instructions (``nvdisasm``) per pixel: the kernel's whole static code (every branch: both sides of the
  active/frozen ``if``, and the IEEE division and square-root slow paths, which a tile rarely or never runs;
  NOP padding dropped) times the threads of a program, over the pixels of its tile and the inner iterations of
  one launch. For a step kernel that is per pixel-iteration. So it bounds what an active tile issues from above;
  ``grid`` columns divide by the image's pixels instead of the tiles' (border tiles' masked lanes count);
- global bytes per pixel (per pixel-iteration for step kernels), counted from the addresses the kernel's loads and
  stores touch when it runs under ``TRITON_INTERPRET=1`` on the level's grid: each address once per launch (the
  DRAM traffic when caches serve every reuse) and once per program (the L2-to-SM traffic when only a program's own
  reuses hit).

The PyTorch operations the solver still runs per pixel (pyramid, flow upsampling, ...) are counted in bytes (each
operation's inputs and outputs); their instructions are not (not our compiled code).

Then a static roofline for the whole solver on the counted work of the 20 real 340x256 pairs of
``bench_flow.py --floor`` (per pair and level: inner iterations run, iterations held in the batch after stopping,
outer iterations; stored in benchmarks/tvl1_work.json, ``--count`` recounts, ~3 min): pairs/s bounded by memory
(bytes over 3.0 TB/s for an H100, 4.3 TB/s for an H200: the copy rates measured on the lent machines) and by
instruction issue (132 SMs x 4 schedulers x 1.98 GHz, one warp instruction per scheduler and cycle, every cycle
issuing), and their minimum. These are estimates from compiled code, not measured speeds.

    python benchmarks/bench_kernels_static.py [--json FILE] [--levels 1] [--no-trace] [--configs]

``--configs`` also compares the candidate configurations of the iterations (benchmarks/kernel_configs.py) and says
which one it recommends and which one ``compute-flow --gpu`` uses.
    PYTHONPATH=/path/to/triton-3.6 python benchmarks/bench_kernels_static.py   # as the device image compiles
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "tvl1_work.json"
BANDWIDTH = {"h100": 3.0e12, "h200": 4.3e12}  # bytes/s, device-to-device copy measured on the lent machines
SMS, SCHEDULERS, CLOCK = 132, 4, 1.98e9  # H100 / H200 SXM: SMs, warp schedulers per SM, boost clock
ISSUE = SMS * SCHEDULERS * CLOCK * 32  # thread-instructions per second when every scheduler issues every cycle


def level_sizes() -> list[tuple[int, int]]:
    from actrec.pipeline.tvl1 import TVL1Params, pyramid_sizes

    p = TVL1Params()
    return pyramid_sizes(256, 340, p.nscales, p.scale_step)


def count_work(path: Path) -> None:
    """Count the work of the 20 real pairs (``floor.held_counts``) and store it."""
    import time

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    sys.path.insert(0, str(REPO / "tests"))
    from bench_flow import load_pairs

    from actrec.pipeline.tvl1 import TVL1Params, floor

    torch.set_num_threads(os.cpu_count() or 1)
    data = Path(os.environ.get("ACTREC_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    a, b = load_pairs(data / "videos", 4)
    t = time.time()
    steps, held, sizes = floor.held_counts(a, b, TVL1Params())
    lines = ['{', ' "pairs": "bench_flow.py: 5 Kinetics clips x 4 consecutive 340x256 pairs",',
             ' "params": "TVL1Params() (OpenCV defaults)",', f' "sizes": {json.dumps(sizes)},']
    for name, counts in (("steps", steps), ("held", held)):  # one pair per line
        rows = ",\n".join("  " + json.dumps(r) for r in counts.tolist())
        lines += [f' "{name}": [', rows, " ]," if name == "steps" else " ]"]
    path.write_text("\n".join(lines + ["}"]) + "\n")
    print(f"counted {len(a)} pairs in {time.time() - t:.0f} s -> {path}")


def interpreter_env() -> dict:
    """The environment of the interpreter traces: ``TRITON_INTERPRET=1`` and the Triton of the virtual environment
    (a Triton put first on PYTHONPATH is left out: the bytes are a property of the kernels' loads and stores, and
    Triton 3.6's interpreter cannot run a loop with a runtime bound under numpy 2)."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not (Path(p) / "triton" / "__init__.py").is_file()]
    return dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(path))


def trace_all(levels: list[tuple[int, int]]) -> dict:
    """Footprints of every launch at every level, traced in a subprocess under the interpreter."""
    out = subprocess.run([sys.executable, __file__, "--trace-levels", json.dumps(levels)], env=interpreter_env(),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def launches(level: tuple[int, int]):
    """The Triton launches of a pyramid level of the 340x256 pyramid (its neighbours decide the resizes)."""
    from actrec.pipeline.tvl1 import kernel_table

    sizes = level_sizes()
    i = sizes.index(tuple(level))
    return kernel_table.level_launches(*level, finer=sizes[i - 1] if i > 0 else None,
                                       coarser=sizes[i + 1] if i + 1 < len(sizes) else None)


def _trace_main(levels: list) -> None:
    from actrec.pipeline.tvl1 import kernel_table

    found = {}
    for h, w in levels:
        for launch in launches((h, w)):
            fp = kernel_table.trace_bytes(launch)
            found[f"{h}x{w}/{launch.name}"] = fp.__dict__
    print(json.dumps(found))


def compile_all(levels: list[tuple[int, int]]) -> dict:
    from actrec.pipeline.tvl1 import compiled

    table, errors = {}, {}
    for h, w in levels:
        for launch in launches((h, w)):
            try:
                comp = compiled.compile_sm90(launch.name, launch.fn, launch.args, launch.kwargs)
            except Exception as exc:  # noqa: BLE001  a kernel that does not compile is a finding of the table
                cause = exc.__cause__ or exc
                errors[launch.name] = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
                comp = None
            table[f"{h}x{w}/{launch.name}"] = (launch, comp)
    return table, errors


def kernel_rows(table: dict, traces: dict | None, level: tuple[int, int]) -> list[dict]:
    """One row per kernel at ``level``: resources, SASS per pixel(-iteration), bytes per pixel(-iteration)."""
    rows = []
    for key, (launch, comp) in table.items():
        if not key.startswith(f"{level[0]}x{level[1]}/"):
            continue
        row = {"name": launch.name, "role": launch.role, "level": f"{level[1]}x{level[0]}"}
        if traces is not None:
            fp = traces[key]
            px = launch.pixels * launch.iterations
            row["bytes_per_pixel_iteration"] = round((fp["loaded"] + fp["stored"]) / px, 2)
            row["program_bytes_per_pixel_iteration"] = round((fp["program_loaded"] + fp["stored"]) / px, 2)
            if fp.get("scratch"):
                row["scratch_bytes_per_pixel_iteration"] = round(fp["scratch"] / px, 1)
        if comp is None:
            row["compile_error"] = True
            rows.append(row)
            continue
        threads = 32 * comp.num_warps
        issued = len(comp.sass)  # per work item (all the iterations of a pass unrolled)
        per_tile = issued * threads / (launch.tile_pixels * launch.iterations)
        per_image = issued * threads * launch.work_items / (launch.pixels * launch.iterations)
        row.update({"registers": comp.registers, "stack_bytes": comp.stack_bytes, "local_bytes": comp.local_bytes,
                    "shared_bytes": comp.shared_bytes, "num_warps": comp.num_warps,
                    "resident_warps_per_sm": comp.resident_warps, "sass_instructions": len(comp.sass),
                    "sass_per_pixel_iteration": round(per_tile, 1),
                    "sass_per_image_pixel_iteration": round(per_image, 1),
                    "iterations_per_launch": launch.iterations})
        rows.append(row)
    return rows


def _events(per: str, it: float, held: float, outer: float, warps: int, k: int = 1) -> float:
    """How often one pair meets a launch's event at one level: ``iteration`` (inner iterations it is in its batch),
    ``pass`` (passes of ``k`` iterations it runs: its iterations plus, for each warp's stop, the rest of the pass
    it stopped in and its replay, at most ``k`` more), ``replay`` (counted with the passes: 0), ``outer`` (outer
    iterations started), ``compaction`` (outer iterations after the first of a warp, when a large batch has nearly
    always lost a pair), ``warp``, ``level``."""
    return {"iteration": it + held, "pass": (it + warps * k) / k, "replay": 0.0 * it, "outer": outer,
            "compaction": np.maximum(outer - warps, 0.0), "warp": warps, "level": 1.0}[per]


def roofline(table: dict, traces: dict, eager: dict, work: dict) -> dict:
    """Bytes and thread-instructions per pair, summed over the real pairs' levels, and the pairs/s they bound."""
    from actrec.pipeline.tvl1 import TVL1Params

    params = TVL1Params()
    steps, held = np.array(work["steps"], dtype=float), np.array(work["held"], dtype=float)
    sizes = [tuple(s) for s in work["sizes"]]
    outer = (steps + held) / params.inner_iterations
    total_bytes = {}
    total_instr = {}
    for li, (h, w) in enumerate(sizes):
        for key, (launch, comp) in table.items():
            if not key.startswith(f"{h}x{w}/"):
                continue
            fp = traces[key]
            launch_bytes = fp["loaded"] + fp["stored"]
            launch_instr = (0 if comp is None else
                            len(comp.sass) * 32 * comp.num_warps * launch.work_items)
            runs = _events(launch.per, steps[:, li], held[:, li], outer[:, li], params.warps,
                           launch.iterations) * launch.times
            if launch.role == "step" and launch.per == "iteration":  # a stopped pair's programs return at once
                runs = steps[:, li]
            total_bytes[launch.name] = total_bytes.get(launch.name, 0.0) + runs * launch_bytes
            total_instr[launch.name] = total_instr.get(launch.name, 0.0) + runs * launch_instr
        for (eh, ew, name), (per, times, nbytes) in eager.items():
            if (eh, ew) == (h, w):
                runs = _events(per, steps[:, li], held[:, li], outer[:, li], params.warps) * times
                total_bytes[name] = total_bytes.get(name, 0.0) + runs * nbytes
    pair_bytes = sum(total_bytes.values())  # (pairs,)
    pair_instr = sum(total_instr.values())
    step_bytes = sum(v for k, v in total_bytes.items() if table_role(table, k) == "step")
    step_instr = sum(v for k, v in total_instr.items() if table_role(table, k) == "step")
    mean = lambda x: float(np.mean(x))  # noqa: E731
    out = {"pixel_iterations_per_pair": mean((steps * np.array([h * w for h, w in sizes])).sum(1)),
           "bytes_per_pair": {k: mean(v) for k, v in total_bytes.items()},
           "instructions_per_pair": {k: mean(v) for k, v in total_instr.items()},
           "issue_pairs_per_s": ISSUE / mean(pair_instr), "step_issue_pairs_per_s": ISSUE / mean(step_instr)}
    for gpu, bw in BANDWIDTH.items():
        out[f"{gpu}_memory_pairs_per_s"] = bw / mean(pair_bytes)
        out[f"{gpu}_pairs_per_s"] = min(out[f"{gpu}_memory_pairs_per_s"], out["issue_pairs_per_s"])
        out[f"{gpu}_step_memory_pairs_per_s"] = bw / mean(step_bytes)
    return out


def table_role(table: dict, name: str) -> str:
    return next((launch.role for launch, _ in table.values() if launch.name == name), "eager")


def eager_table(levels: list[tuple[int, int]], all_sizes: list[tuple[int, int]]) -> dict:
    """Bytes per pair of each per-pixel PyTorch step at each level."""
    from actrec.pipeline.tvl1 import kernel_table

    found = {}
    for h, w in levels:
        i = all_sizes.index((h, w))
        finer = all_sizes[i - 1] if i > 0 else None
        coarser = all_sizes[i + 1] if i + 1 < len(all_sizes) else None
        for e in kernel_table.level_eager(h, w, finer, coarser):
            found[(h, w, e.name)] = (e.per, e.times, kernel_table.eager_bytes(e.run) * (h * w) / e.pixels)
    return found


def print_table(rows: list[dict]) -> None:
    cols = [("name", "kernel"), ("role", "role"), ("registers", "regs"), ("stack_bytes", "stack"),
            ("local_bytes", "local"), ("shared_bytes", "smem"), ("num_warps", "warps"),
            ("resident_warps_per_sm", "res.warps/SM"), ("sass_instructions", "SASS"),
            ("sass_per_pixel_iteration", "SASS/px-it"), ("sass_per_image_pixel_iteration", "SASS/px-it grid"),
            ("bytes_per_pixel_iteration", "B/px-it"), ("program_bytes_per_pixel_iteration", "B/px-it prog"),
            ("scratch_bytes_per_pixel_iteration", "scratch B/px-it")]
    print("| " + " | ".join(c[1] for c in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c[0], "compile error" if r.get("compile_error") else "-"))
                                for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the table and roofline to this file")
    ap.add_argument("--work", default=str(WORK), help="counted work of the real pairs (JSON)")
    ap.add_argument("--count", action="store_true", help="recount the work of the 20 real pairs into --work first")
    ap.add_argument("--levels", type=int, default=5, help="pyramid levels to compile and trace (1: 340x256 only; "
                    "the roofline needs all 5)")
    ap.add_argument("--no-trace", action="store_true", help="skip the interpreter trace of the bytes (and the "
                    "roofline)")
    ap.add_argument("--configs", action="store_true", help="also compare the step kernel's candidate tiles")
    ap.add_argument("--trace-levels", help=argparse.SUPPRESS)
    ap.add_argument("--trace-configs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trace_levels:
        _trace_main(json.loads(args.trace_levels))
        return
    if args.trace_configs:
        from kernel_configs import trace_configs

        trace_configs()
        return
    if args.count:
        count_work(Path(args.work))
    import triton

    sizes = level_sizes()
    levels = sizes[:args.levels]
    print(f"triton {triton.__version__} ({Path(triton.__file__).parent}); target sm_90a; levels "
          + ", ".join(f"{w}x{h}" for h, w in levels), flush=True)
    table, errors = compile_all(levels)
    for name, err in errors.items():
        print(f"COMPILE ERROR {name}: {err}", flush=True)
    traces = None if args.no_trace else trace_all(levels)
    rows = kernel_rows(table, traces, levels[0])
    print(f"\nkernels at {levels[0][1]}x{levels[0][0]} (compiled-code figures; bytes from the interpreter trace)")
    print_table(rows)
    result = {"triton": triton.__version__, "levels": [f"{w}x{h}" for h, w in levels], "kernels": rows,
              "compile_errors": errors,
              "kernels_by_level": {f"{w}x{h}": kernel_rows(table, traces, (h, w)) for h, w in levels}}
    if traces is not None and len(levels) == len(sizes):
        work = json.loads(Path(args.work).read_text())
        eager = eager_table(levels, sizes)
        roof = roofline(table, traces, eager, work)
        roof["complete"] = not errors  # a kernel that does not compile is missing from the sums
        result["roofline"] = roof
        print_roofline(roof)
    if args.configs:
        from kernel_configs import compare_configs

        from actrec.pipeline.tvl1.backend import kernel_config

        result["configs"] = compare_configs(json.loads(Path(args.work).read_text()))
        used = kernel_config()
        print(f"compute-flow --gpu uses {used.bh}x{used.bw}x{used.num_warps}x{used.k} (backend.kernel_config)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def print_roofline(roof: dict) -> None:
    px = roof["pixel_iterations_per_pair"]
    print(f"\nstatic roofline, whole solver, mean of the 20 real pairs ({px / 1e6:.2f} M pixel-iterations per pair); "
          "estimates from compiled code, not measurements")
    print("| work | bytes per pair (MB) | B per pixel-iteration | thread-instructions per pair (G) |")
    print("|---|---:|---:|---:|")
    for name, b in roof["bytes_per_pair"].items():
        instr = roof["instructions_per_pair"].get(name)
        print(f"| {name} | {b / 1e6:.1f} | {b / px:.2f} | {'-' if instr is None else f'{instr / 1e9:.2f}'} |")
    total = sum(roof["bytes_per_pair"].values())
    print(f"| total | {total / 1e6:.1f} | {total / px:.2f} | {sum(roof['instructions_per_pair'].values()) / 1e9:.2f} |")
    print(f"\nissue bound: {roof['issue_pairs_per_s']:.0f} pairs/s (step kernels alone "
          f"{roof['step_issue_pairs_per_s']:.0f})")
    for gpu in BANDWIDTH:
        print(f"{gpu.upper()}: memory bound {roof[f'{gpu}_memory_pairs_per_s']:.0f} pairs/s (step kernels alone "
              f"{roof[f'{gpu}_step_memory_pairs_per_s']:.0f}); roofline {roof[f'{gpu}_pairs_per_s']:.0f} pairs/s")


if __name__ == "__main__":
    main()
