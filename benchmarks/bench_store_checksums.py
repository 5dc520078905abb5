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
``--rounds`` rounds and each one's best round is reported, so a shared machine's load moves all of them alike. Each
read is timed in CPU time (``time.process_time``: what a loader worker's core pays, and a figure other jobs on a
shared machine disturb far less than wall time) and in wall time.

A second table says what bit rot does to each store: 8 bytes are inverted in the middle of every stored entry of one
video (one at a time, in place, then restored) and the entry is read back through the reader: an error, the same data
(the flip hit nothing read), or different data returned without a word.

    python benchmarks/bench_store_checksums.py [--work DIR] [--fps 3] [--reads 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
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
from actrec.errors import StoreError
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.flow_spec import codec_storage
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
                              **codec_storage(codec))
    return write


def frames_without_checksums(target: h5py.Group, name: str, dset: h5py.Dataset) -> None:
    items = np.empty(dset.shape[0], dtype=object)
    items[:] = list(dset[()])
    target.create_dataset(name, data=items, dtype=h5py.vlen_dtype(np.uint8))


def flip_outcomes(root: Path) -> Counter:
    """Invert 8 bytes in the middle of each entry of the shard's first video, read that entry back, restore it."""
    shard = next(root.glob("*-00000.h5"))
    frames = (root / "frames-00000.h5").exists()
    reader = FrameStore if frames else FlowStore
    with h5py.File(shard, "r") as f:
        video_id = sorted(f[VIDEOS])[0]
        dset = f[VIDEOS][video_id]["frames" if frames else "flow"]
        if dset.chunks:
            spans = [(info.byte_offset, info.size) for info in map(dset.id.get_chunk_info, range(dset.shape[0]))]
        else:
            data = shard.read_bytes()
            spans = [(data.index(item.tobytes()), len(item)) for item in dset[()]]

    def read(index: int) -> np.ndarray:
        with reader(root) as store:
            return store.read(video_id, [index]) if frames else store.read_stack(video_id, index, 1)

    original = [read(i) for i in range(len(spans))]
    outcome: Counter = Counter()
    for index, (start, size) in enumerate(spans):
        middle = start + size // 2
        _invert(shard, middle)
        try:
            outcome["same" if np.array_equal(read(index), original[index]) else "different"] += 1
        except StoreError:
            outcome["error"] += 1
        finally:
            _invert(shard, middle)
    return outcome


def _invert(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        octets = f.read(8)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in octets))


def timed(reads: list, read: Callable) -> tuple[float, float]:
    """CPU microseconds per read, and reads per wall-clock second."""
    start, cpu = time.perf_counter(), time.process_time()
    for args in reads:
        read(*args)
    return (time.process_time() - cpu) / len(reads) * 1e6, len(reads) / (time.perf_counter() - start)


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
        print("\n| store | entries with 8 bytes flipped | read fails | same data | different data, no error |")
        print("|---|---|---|---|---|")
        for name, root in {"JPEG frames, CRC-32 (actrec)": frames_root, "JPEG frames, none (before)": plain_frames,
                           **{f"flow {name}": root for name, root in flow_stores.items()}}.items():
            outcome = flip_outcomes(root)
            print(f"| {name} | {sum(outcome.values())} | {outcome['error']} | {outcome['same']} | "
                  f"{outcome['different']} |")


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

    tests: dict[str, Callable[[], tuple[float, float]]] = {}
    for name, store in flows.items():
        tests[f"flow stack, {name}"] = lambda s=store: timed(stacks, s.read_stack)
    for codec in ("zstd", "none"):
        tests[f"flow stack, {codec} + CRC-32 of the decompressed flow"] = (
            lambda s=flows[codec]: timed(stacks, crc_after(s)))
    for name, store in frames.items():
        tests[f"3 frames decoded, {name}"] = lambda s=store: timed(clips, s.read)
        tests[f"whole video's JPEG bytes, {name}"] = lambda s=store: timed(whole, s.read_stored)
    cpu = {name: float("inf") for name in tests}
    rate = {name: 0.0 for name in tests}
    for _ in range(args.rounds):
        for name, test in tests.items():
            us, per_second = test()
            cpu[name], rate[name] = min(cpu[name], us), max(rate[name], per_second)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{sum(counts.values())} flows of {len(counts)} videos at 340x256, best of {args.rounds} rounds")
    print("| read | CPU us per read | CPU vs unchecked | reads/s (wall) | wall time vs unchecked |")
    print("|---|---|---|---|---|")
    for name in tests:
        base = _baseline(name)
        print(f"| {name} | {cpu[name]:.0f} | {'' if base is None else f'{cpu[name] / cpu[base]:.3f}x'} | "
              f"{rate[name]:.1f} | {'' if base is None else f'{rate[base] / rate[name]:.3f}x'} |")


def _baseline(name: str) -> str | None:
    """The same read without any checksum."""
    if name.startswith("flow stack, "):
        return f"flow stack, {name.removeprefix('flow stack, ').split(' ')[0]}"
    if "CRC-32 (actrec)" in name:
        return name.replace("CRC-32 (actrec)", "none (before)")
    return None


if __name__ == "__main__":
    main()
