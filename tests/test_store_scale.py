"""Stores at dataset scale: a reader keeps its open files and memory flat however many shards it reads.

A frame store of 1,100 shards (one tiny video each, written with the store's own writer) is read completely, in random
order, by a subprocess whose RLIMIT_NOFILE is lowered to 64: without the LRU of open shards the read fails with
"Too many open files" after ~50 shards, and resident memory grew by ~0.45 MB per shard that stayed open.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from actrec.pipeline.store import MAX_OPEN_SHARDS, VIDEOS, Dataset, _create_dataset, _new_file, init_store

NUM_SHARDS = 1100
NOFILE = 64

READER = """
import json, os, random, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))
from actrec.pipeline.frames import FrameStore

def rss_kb():
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS:")))

store = FrameStore(sys.argv[1])
ids = store.video_ids
random.Random(0).shuffle(ids)
total, rss, peak_files = 0, [], 0
for i, vid in enumerate(ids):
    total += int(store.read(vid).sum() > 0)
    peak_files = max(peak_files, len(os.listdir("/proc/self/fd")))
    if i in (len(ids) // 4, len(ids) - 1):
        rss.append(rss_kb())
print(json.dumps({{"videos": len(ids), "read": total, "open_shards": store.open_shards, "peak_files": peak_files,
                  "rss_kb": rss}}))
"""


def _one_id_per_shard(num_shards: int) -> dict[int, str]:
    """A video id for every shard, as the stages place them (shard = crc32(id) % num_shards)."""
    ids: dict[int, str] = {}
    i = 0
    while len(ids) < num_shards:
        vid = f"clip{i:05d}"
        ids.setdefault(zlib.crc32(vid.encode()) % num_shards, vid)
        i += 1
    return ids


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scale") / "frames"
    layout = init_store(root, "frames", {"generated": True}, NUM_SHARDS)
    rng = np.random.default_rng(0)
    for shard, vid in _one_id_per_shard(NUM_SHARDS).items():
        jpegs = [cv2.imencode(".jpg", rng.integers(1, 255, (8, 8, 3), dtype=np.uint8))[1].ravel() for _ in range(2)]
        with _new_file(layout.shard_path(shard), "frames") as f:  # a sealed shard, written in one go (10x faster)
            group = f[VIDEOS].create_group(vid)
            _create_dataset(group, "frames", Dataset(jpegs))
            group.attrs["num_frames"] = 2
    return root


def test_reading_every_shard_keeps_files_and_memory_flat(big_store: Path) -> None:
    assert len(list(big_store.glob("frames-*.h5"))) == NUM_SHARDS
    proc = subprocess.run([sys.executable, "-c", READER.format(nofile=NOFILE), str(big_store)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["videos"] == result["read"] == NUM_SHARDS
    assert result["open_shards"] == MAX_OPEN_SHARDS
    assert result["peak_files"] < NOFILE
    first, last = result["rss_kb"]
    # ~825 more shards were opened and closed between the two samples; 0.45 MB each if they had stayed open
    assert last - first < 40_000, result


def test_reader_threads_sharing_one_store_never_lose_a_file(big_store: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """compute-flow's reader threads share one FrameStore: a thread evicting a shard from the LRU must not close a
    file another thread is reading (with one handle allowed, a shared LRU closes them under each other)."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import actrec.pipeline.store_reader as reader_module
    from actrec.pipeline.frames import FrameStore

    monkeypatch.setattr(reader_module, "MAX_OPEN_SHARDS", 1)
    store = FrameStore(big_store)
    ids = store.video_ids

    def read_many(seed: int) -> int:
        picks = random.Random(seed).sample(ids, 150)
        return sum(store.read(vid).shape == (2, 8, 8, 3) for vid in picks)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(read_many, range(4))) == [150] * 4
    assert store.open_shards == 4  # one per thread
    store.close()
    assert store.open_shards == 0


def test_plain_h5py_reads_a_shard_that_a_framestore_holds_open(videos_dir: Path, tmp_path: Path) -> None:
    """The README's two ways to read a store work together in one process (same HDF5 file-locking flags)."""
    import h5py

    from actrec.data_manifests.manifest import ManifestRow
    from actrec.pipeline.decode import ResizeSpec
    from actrec.pipeline.frames import ExtractOptions, FrameStore, extract_frames

    rows = [ManifestRow("tai_chi", "kinetics_tai_chi.mp4", 0, "tai chi", "train")]
    extract_frames(rows, videos_dir, tmp_path / "frames", ExtractOptions(ResizeSpec(64, 48), fps=2.0), progress=False)
    store = FrameStore(tmp_path / "frames")
    first = store.read("tai_chi", [0])[0]  # the store now holds the shard open
    (shard,) = tmp_path.glob("frames/frames-*.h5")
    with h5py.File(shard, "r") as f:  # the README's snippet, verbatim
        for vid, g in f["videos"].items():
            bgr = cv2.imdecode(np.asarray(g["frames"][0]), cv2.IMREAD_COLOR)
    assert vid == "tai_chi" and np.array_equal(bgr[..., ::-1], first)
    assert store.read("tai_chi", [1]).shape == (1, 48, 64, 3)  # and the store still reads after h5py closed its file
    store.close()
