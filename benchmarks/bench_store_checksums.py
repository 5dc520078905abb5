"""What verifying the stores' checksums costs a reader: the same entries read with and without them, in one run.

Real clips are extracted at 340x256 (JPEG, the default frame store) and their TV-L1 flow computed (OpenCV backend,
default parameters, uint8 codes), both with checksums as actrec writes them. The same entries are then rewritten
as stores of the earlier format (no checksum), and, for flow, with each codec (zstd, lz4, gzip, none) with and
without HDF5's fletcher32 filter. Reads go through the real readers (``FrameStore``, ``FlowStore``), as a training
loader makes them:

- flow: a stack of L=10 consecutive flows at a random position of a random video (``FlowStore.read_stack``);
- frames: 3 random frames of a random video, decoded to RGB (a STILT clip's segments; ``FrameStore.read``), and a
  whole video's stored JPEG bytes (compute-flow's read; ``FrameStore.read_stored``).

The alternative to fletcher32 for flow, a CRC-32 per entry over the decompressed flow (what the frame store does for
its JPEG bytes), is timed as the unchecked read plus ``zlib.crc32`` of each flow read. Variants are interleaved over
``--rounds`` rounds and each one's best round is reported, so a shared machine's load moves all of them alike.

    python benchmarks/bench_store_checksums.py [--work DIR] [--fps 3] [--reads 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.flow import COMPRESSIONS, FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames
from actrec.pipeline.store import META_FILE, VIDEOS

CLIPS = ["kinetics_skateboarding.mp4", "kinetics_arm_wrestling.mp4", "activitynet_v_GGSY1Qvo990.mp4"]
L = 10


def prepare(videos: Path, work: Path, fps: float, clips: list[str]) -> tuple[Path, Path]:
    """Frame and flow stores of the clips at 340x256, written by actrec (with checksums); resumed when present."""
    rows = [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in clips]
    frames, flow = work / "frames", work / "flow"
    extract_frames(rows, videos, frames, ExtractOptions(fps=fps), progress=False)
    compute_flow(frames, flow, FlowOptions(backend="opencv"), workers=2, progress=False)
    return frames, flow


def rewrite(src: Path, dst: Path, write: Callable[[h5py.Group, str, h5py.Dataset], None]) -> Path:
    """A one-shard copy of the store at ``src`` whose main datasets are written again by ``write``."""
    dst.mkdir(parents=True, exist_ok=True)
    meta = json.loads((src / META_FILE).read_text())
    (dst / META_FILE).write_text(json.dumps({**meta, "num_shards": 1}))
    with h5py.File(dst / f"{meta['kind']}-00000.h5", "w", libver="latest") as out:
        out.attrs.update({"actrec_kind": meta["kind"], "format_version": meta["format_version"]})
        videos = out.create_group(VIDEOS)
        for shard in sorted(src.glob(f"{meta['kind']}-*.h5")):
            with h5py.File(shard, "r") as f:
                for video_id, group in f[VIDEOS].items():
                    target = videos.create_group(video_id)
                    target.attrs.update(dict(group.attrs))
                    for name, dset in group.items():
                        write(target, name, dset)
    return dst


def flow_writer(codec: str, fletcher32: bool) -> Callable[[h5py.Group, str, h5py.Dataset], None]:
    def write(target: h5py.Group, name: str, dset: h5py.Dataset) -> None:
        data = dset[()]
        target.create_dataset(name, data=data, chunks=(1, *data.shape[1:]), fletcher32=fletcher32,
                              **COMPRESSIONS[codec])
    return write


def frames_without_checksums(target: h5py.Group, name: str, dset: h5py.Dataset) -> None:
    items = np.empty(dset.shape[0], dtype=object)
    items[:] = list(dset[()])
    target.create_dataset(name, data=items, dtype=h5py.vlen_dtype(np.uint8))


def timed(reads: list, read: Callable) -> float:
    start = time.perf_counter()
    for args in reads:
        read(*args)
    return len(reads) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/videos")
    parser.add_argument("--work", type=Path, help="keep the stores here between runs (default: a temporary folder)")
    parser.add_argument("--clips", nargs="+", default=CLIPS)
    parser.add_argument("--fps", type=float, default=3.0)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        frames_root, flow_root = prepare(args.videos, work, args.fps, args.clips)
        variants = work / "variants"
        flow_stores = {f"{codec}{' + fletcher32' if f32 else ''}": rewrite(
            flow_root, variants / f"flow_{codec}_{int(f32)}", flow_writer(codec, f32))
            for codec in ("zstd", "lz4", "gzip", "none") for f32 in (False, True)}
        plain_frames = rewrite(frames_root, variants / "frames_plain", frames_without_checksums)
        run(args, frames_root, plain_frames, flow_stores)


def run(args: argparse.Namespace, frames_root: Path, plain_frames: Path, flow_stores: dict[str, Path]) -> None:
    rng = random.Random(0)
    flows = {name: FlowStore(root) for name, root in flow_stores.items()}
    some = next(iter(flows.values()))
    counts = {v: some.num_flows(v) for v in some.video_ids}
    stacks = [(v, rng.randrange(counts[v] - L + 1), L) for v in rng.choices(sorted(counts), k=args.reads)]
    frames = {"JPEG frames, CRC-32 (actrec)": FrameStore(frames_root), "JPEG frames, none (before)": FrameStore(
        plain_frames)}
    lengths = {v: frames["JPEG frames, none (before)"].num_frames(v) for v in counts}
    clips = [(v, sorted(rng.sample(range(lengths[v]), 3))) for v in rng.choices(sorted(counts), k=args.reads)]
    whole = [(v,) for v in sorted(counts)] * 2

    def crc_after(store: FlowStore) -> Callable:
        def read(video_id: str, start: int, length: int) -> None:
            for flow in store.read_stack(video_id, start, length):
                zlib.crc32(flow)
        return read

    tests: dict[str, Callable[[], float]] = {}
    for name, store in flows.items():
        tests[f"flow stack, {name}"] = lambda s=store: timed(stacks, s.read_stack)
    for codec in ("zstd", "none"):
        tests[f"flow stack, {codec} + CRC-32 of the decompressed flow"] = (
            lambda s=flows[codec]: timed(stacks, crc_after(s)))
    for name, store in frames.items():
        tests[f"3 frames decoded, {name}"] = lambda s=store: timed(clips, s.read)
        tests[f"whole video's JPEG bytes, {name}"] = lambda s=store: timed(whole, s.read_stored)
    best = {name: 0.0 for name in tests}
    for _ in range(args.rounds):
        for name, test in tests.items():
            best[name] = max(best[name], test())
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{sum(counts.values())} flows of {len(counts)} videos at 340x256, best of {args.rounds} rounds")
    print("| read | per second | vs the same read without checksum |")
    print("|---|---|---|")
    for name, rate in best.items():
        base = _baseline(name, best)
        print(f"| {name} | {rate:.1f} | {'' if base is None else f'{rate / base:.3f}x'} |")


def _baseline(name: str, best: dict[str, float]) -> float | None:
    """The rate of the same read without any checksum."""
    if name.startswith("flow stack, "):
        codec = name.removeprefix("flow stack, ").split(" ")[0]
        return best[f"flow stack, {codec}"]
    if "CRC-32 (actrec)" in name:
        return best[name.replace("CRC-32 (actrec)", "none (before)")]
    return None


if __name__ == "__main__":
    main()
