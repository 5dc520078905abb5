"""The training bad-sample policy (issue 29 item 3) on a JPEG frame store with one corrupt frame entry: skipped,
listed and counted, or fatal, with loader workers or without, exactly again on resume, and never a hang."""

from __future__ import annotations

import csv
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from actrec.data_manifests.manifest import read_manifest
from actrec.errors import StoreError
from actrec.pipeline.frames import FrameStore
from actrec.pipeline.store import Dataset, init_store, seal_shard, write_part
from actrec.training.bad_samples import BadSampleLedger, read_listing
from actrec.training.batch import BadSample
from actrec.training.config import resolve_config
from actrec.training.distributed import StreamBatchSampler
from actrec.training.trainer import resume_config, train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)

BAD_VIDEO = "c1_v2"
BAD_FRAME = 1  # 4 frames, 3 flows, stacks of 3: every clip is position 0, whose RGB frame is frame 1


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fx.TinyData:
    """The tiny learnable dataset with its frames as a JPEG store in which frame 1 of BAD_VIDEO cannot be decoded
    (its bytes were overwritten in the sealed shard)."""
    root = tmp_path_factory.mktemp("bad")
    tiny = fx.learnable_dataset(root, classes=3, train_per_class=4, test_per_class=0, frames=4)
    raw = FrameStore(tiny.frames)
    layout = init_store(root / "jpeg_frames", "frames", {"encoding": "jpeg"}, num_shards=1)
    for video_id in raw.video_ids:
        frames = raw.read(video_id)
        jpegs = [np.frombuffer(cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1], np.uint8) for f in frames]
        write_part(layout, 0, video_id, {"frames": Dataset(jpegs)},
                   {"num_frames": len(frames), "height": frames.shape[1], "width": frames.shape[2], "fps": 25.0,
                    "encoding": "jpeg"})
        if video_id == BAD_VIDEO:
            bad_bytes = jpegs[BAD_FRAME].tobytes()
    seal_shard(layout, 0)
    shard = layout.shard_path(0)
    content = shard.read_bytes()
    offset = content.find(bad_bytes)
    assert offset > 0 and content.find(bad_bytes, offset + 1) < 0
    with shard.open("r+b") as f:  # the frame entry's JPEG header (start-of-image marker onwards) becomes garbage
        f.seek(offset)
        f.write(b"\x00" * 64)
    with pytest.raises(StoreError):
        FrameStore(root / "jpeg_frames").read(BAD_VIDEO, [BAD_FRAME])
    return fx.TinyData(root / "jpeg_frames", tiny.flow, tiny.manifest, tiny.num_classes)


def _config(data: fx.TinyData, workers: int, **changes: object):
    return resolve_config("stilt", overrides=fx.tiny_overrides(data, **{"iterations": 6, "workers": workers,
                                                                        "flow_length": 3, **changes}))


def _bad_clips(data: fx.TinyData, clips: int, seed: int = 0) -> list[int]:
    """Stream positions among the first ``clips`` that are clips of BAD_VIDEO (the data order's own function)."""
    rows = read_manifest(data.manifest, ["train"])
    order = StreamBatchSampler(len(rows), 4, seed, rank=0, world_size=1, accumulate=1, start=0, stop=1)
    bad = [i for i, row in enumerate(rows) if row.video_id == BAD_VIDEO]
    return [p for p in range(clips) if order.video_at(p) in bad]


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_frame_is_skipped_listed_and_counted(data, tmp_path, workers):
    lines: list[str] = []
    summary = train(_config(data, workers), tmp_path / "run", progress=False, log=lines.append)
    expected = _bad_clips(data, 6 * 4)
    assert len(expected) == 2 and summary.iteration == 6  # the run went on to the end
    listing = read_listing(tmp_path / "run" / "bad_samples.csv")
    assert [int(row["position"]) for row in listing] == expected
    assert {row["video_id"] for row in listing} == {BAD_VIDEO}
    assert all(row["error"] for row in listing)  # the StoreError's own message (the stores name entry and shard)
    assert [int(row["iteration"]) for row in listing] == [p // 4 + 1 for p in expected]
    assert int(_metrics(tmp_path / "run")[-1]["bad_samples"]) == 2 and summary.skipped == 2
    assert "2 unreadable clips skipped" in summary.line()
    warnings = [line for line in lines if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and BAD_VIDEO in warnings[0]
    assert not multiprocessing.active_children()  # the loader's workers are gone


def test_a_resumed_run_lists_and_counts_exactly_as_an_uninterrupted_one(data, tmp_path):
    """Resumed from a checkpoint between the two bad clips, after a crash that had listed the second already."""
    train(_config(data, 0), tmp_path / "whole", progress=False, log=lambda line: None)
    whole = read_listing(tmp_path / "whole" / "bad_samples.csv")
    checkpoint_at = int(whole[0]["iteration"])
    assert int(whole[1]["iteration"]) > checkpoint_at
    train(_config(data, 0, iterations=checkpoint_at), tmp_path / "parts", progress=False, log=lambda line: None)
    with (tmp_path / "parts" / "bad_samples.csv").open("a", newline="") as f:
        csv.writer(f).writerow(whole[1].values())  # listed by the crashed run after its last checkpoint
    summary = train(resume_config(tmp_path / "parts", {"iterations": 6}), tmp_path / "parts", resume=True,
                    progress=False, log=lambda line: None)
    assert summary.skipped == 2
    assert read_listing(tmp_path / "parts" / "bad_samples.csv") == whole
    counts = [row["bad_samples"] for row in _metrics(tmp_path / "parts")]
    assert counts == [row["bad_samples"] for row in _metrics(tmp_path / "whole")] and counts[-1] == "2"


@pytest.mark.parametrize("workers", [0, 2])
def test_fail_policy_stops_at_once_naming_the_video(data, tmp_path, workers):
    start = time.perf_counter()
    with pytest.raises(StoreError, match=f"{BAD_VIDEO}.*--on-bad-sample skip would skip it"):
        train(_config(data, workers, on_bad_sample="fail"), tmp_path / "run", progress=False, log=lambda line: None)
    assert time.perf_counter() - start < 60
    assert not multiprocessing.active_children()


def test_the_train_command_exits_with_one_line_and_no_hang(data, tmp_path):
    args = ["train", "stilt", "--frames", str(data.frames), "--flow", str(data.flow), "--manifest",
            str(data.manifest), "--out", str(tmp_path / "run"), "--reduced", "--crop", "32", "--resize", "36",
            "--segments", "2", "--flow-length", "3", "--batch-size", "4", "--iterations", "6", "--workers", "2",
            "--on-bad-sample", "fail", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "actrec.cli", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and BAD_VIDEO in errors[0] and "Traceback" not in done.stderr


def test_the_budget_allows_a_few_and_a_small_fraction():
    def ledger(tmp: Path, policy: str = "skip", budget: float = 0.001) -> BadSampleLedger:
        return BadSampleLedger(tmp / f"{policy}{budget}.csv", policy, budget, 0, 8, lambda line: None)

    bad = [BadSample("v", 3, "stored JPEG frame cannot be decoded")]
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ledger_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    early = ledger(tmp)
    for _ in range(10):  # ten bad clips in a row are within the grace, whatever the fraction
        early.record(bad, 1, 1)
    with pytest.raises(StoreError, match="11 of the 11 training clips"):
        early.record(bad, 1, 1)
    rare = ledger(tmp, budget=0.01)
    for _ in range(30):  # one in 200 is under 1%
        rare.record(bad, 200, 1)
    with pytest.raises(StoreError, match="skip would skip it"):
        ledger(tmp, "fail").record(bad, 8, 1)
