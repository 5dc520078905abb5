"""How fast compute-flow's reading side turns a frame store into grayscale frames, per reader thread and process.

The GPU solver's target is 2,000 pairs/s at 340x256 on one GPU; with --step 1 every new pair needs one new frame,
so the readers must deliver 2,000 gray frames/s. Real clips are extracted at 340x256 (JPEG, ffmpeg -q:v 2, the
default store), then every video is read whole, as the flow driver reads it (HDF5 read of the JPEG bytes, decode,
RGB -> gray exactly as OpenCV converts), by 1, 2 and 4 reader threads and by 1, 2 and 4 reader processes. The
steps of one frame are also timed alone (CPU time, which a loaded machine distorts far less than wall time), to
show where the time goes and which steps serialise threads, and so are the writing side's steps per flow.

    python benchmarks/bench_flow_reader.py [--videos DIR] [--repeat 3] [--target 2000]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2

from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import FlowOptions, _gray_frames, flow_part, quantize_on_device
from actrec.pipeline.flow_opencv import opencv_tvl1_flow
from actrec.pipeline.flowio import quantize_flow
from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames
from actrec.pipeline.stage import WorkItem, write_video
from actrec.pipeline.store import init_store
from actrec.pipeline.tvl1 import to_gray

CLIPS = ["kinetics_arm_wrestling.mp4", "kinetics_skateboarding.mp4", "kinetics_pool_cleaning.mp4",
         "activitynet_v_GGSY1Qvo990.mp4", "ucf101_ApplyEyeMakeup_xvid.avi", "kinetics_tai_chi.mp4"]
_STORE: FrameStore | None = None  # the frame store of a reader process


def _open_store(root: str) -> None:
    global _STORE
    _STORE = FrameStore(root)


def _read_in_process(video_id: str) -> int:
    return len(_gray_frames(_STORE, video_id))


def threads_rate(root: Path, ids: list[str], readers: int, repeat: int) -> float:
    """Gray frames/s of ``readers`` threads sharing one FrameStore, each reading whole videos."""
    store = FrameStore(root)
    work = ids * repeat
    start = time.perf_counter()
    with ThreadPoolExecutor(readers) as pool:
        frames = sum(len(gray) for gray in pool.map(lambda vid: _gray_frames(store, vid), work))
    return frames / (time.perf_counter() - start)


def processes_rate(root: Path, ids: list[str], readers: int, repeat: int) -> float:
    """Gray frames/s of ``readers`` processes, each with its own FrameStore (start-up excluded)."""
    context = multiprocessing.get_context("fork")
    with context.Pool(readers, initializer=_open_store, initargs=(str(root),)) as pool:
        pool.map(_read_in_process, ids[:readers])  # warm: every process has opened its shards
        start = time.perf_counter()
        frames = sum(pool.map(_read_in_process, ids * repeat, chunksize=1))
        return frames / (time.perf_counter() - start)


def cpu_us(run, count: int, repeat: int = 3) -> float:
    """Best CPU time of ``run()`` (all threads of this process) over ``repeat`` tries, in microseconds per item: on
    a loaded machine CPU time, unlike wall time, is close to what a free core would take."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best / count * 1e6


def read_steps(root: Path, video_id: str) -> dict[str, float]:
    """CPU microseconds per frame of each step of a read, in one thread. h5py releases the GIL inside HDF5 but
    serialises every HDF5 call of a process behind one lock; OpenCV's calls release the GIL."""
    store = FrameStore(root)
    dset = store.group(video_id)["frames"]
    n = dset.shape[0]
    buffers = list(dset[()])
    bgr = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in buffers]
    return {
        "HDF5 read, one call per frame (h5py lock)": cpu_us(lambda: [dset[i] for i in range(n)], n),
        "HDF5 read, one call per video (h5py lock)": cpu_us(lambda: dset[()], n),
        "JPEG decode, cv2.imdecode (GIL released)": cpu_us(lambda: [cv2.imdecode(b, cv2.IMREAD_COLOR)
                                                                     for b in buffers], n),
        "BGR -> RGB -> gray (GIL released)": cpu_us(lambda: [cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2RGB),
                                                                          cv2.COLOR_RGB2GRAY) for x in bgr], n),
        "BGR -> gray (GIL released)": cpu_us(lambda: [cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) for x in bgr], n),
        "FrameStore.read + to_gray (the earlier reader)": cpu_us(lambda: to_gray(store.read(video_id)), n),
        "flow._gray_frames (compute-flow's reader)": cpu_us(lambda: _gray_frames(store, video_id), n),
    }


def write_steps(root: Path, video_id: str, pairs: int) -> dict[str, float]:
    """CPU microseconds per flow of the writing side, on real TV-L1 flow of ``pairs`` pairs of a video."""
    gray = _gray_frames(FrameStore(root), video_id)[:pairs + 1]
    flow = opencv_tvl1_flow(gray[:-1], gray[1:], workers=2)
    codes = quantize_flow(flow, 20.0)
    layout = init_store(root.parent / "flow", "flow", FlowOptions().store_params(), 1)
    item = WorkItem(video_id, video_id, 0)
    return {
        "quantise on the CPU, numpy (per pair)": cpu_us(lambda: quantize_flow(flow.numpy(), 20.0), pairs),
        "quantise with torch on the solver's device, here CPU": cpu_us(lambda: quantize_on_device(flow, 20.0), pairs),
        "write_part, Blosc-LZ4 uint8 (writer thread, h5py lock)": cpu_us(
            lambda: write_video(layout, item, *flow_part(item, pairs + 1, codes, FlowOptions())), pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "videos")
    parser.add_argument("--repeat", type=int, default=3, help="Passes over the videos per measurement.")
    parser.add_argument("--target", type=float, default=2000.0, help="Pairs/s the readers must feed.")
    parser.add_argument("--pairs", type=int, default=12, help="Real TV-L1 flows for the writing side's timing.")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the flow driver's readers decode one frame per call; keep OpenCV from fanning out
    with tempfile.TemporaryDirectory(prefix="bench-flow-reader-") as tmp:
        root = Path(tmp) / "frames"
        rows = [ManifestRow(Path(c).stem, c, 0, "c", "train") for c in CLIPS]
        extract_frames(rows, args.videos, root, ExtractOptions(resize=ResizeSpec(340, 256)), workers=2, progress=False)
        store = FrameStore(root)
        ids = store.video_ids
        total = sum(store.num_frames(v) for v in ids)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {len(ids)} clips, {total} frames at 340x256 "
              f"(JPEG q:v 2)")
        steps = read_steps(root, ids[0])
        for name, us in steps.items():
            print(f"  {name:54s} {us:7.0f} us CPU/frame")
        print("readers  threads (frames/s, wall)  processes (frames/s, wall)")
        for readers in (1, 2, 4):
            print(f"{readers:7d}  {threads_rate(root, ids, readers, args.repeat):24.0f}  "
                  f"{processes_rate(root, ids, readers, args.repeat):26.0f}", flush=True)
        per_core = 1e6 / steps["flow._gray_frames (compute-flow's reader)"]
        locked = steps["HDF5 read, one call per video (h5py lock)"] / steps["flow._gray_frames (compute-flow's reader)"]
        print(f"one reader: {per_core:.0f} gray frames per CPU-second, {100 * locked:.1f}% of it under h5py's lock; "
              f"{args.target:.0f} pairs/s at --step 1 needs {args.target / per_core:.1f} free cores of readers")
        for name, us in write_steps(root, ids[0], args.pairs).items():
            print(f"  {name:54s} {us:7.0f} us CPU/flow")
        print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
