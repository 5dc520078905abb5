"""The per-video stage loop as a user sees it: the progress bar's unit and end, messages printed through the bar,
the summary of an interrupted run, and the failure report kept across runs."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline import stage as stage_mod
from actrec.pipeline.stage import REPORT_HEADER, Outcome, Progress, WorkItem, run_stage

LIGHT_CLI = ["--nscales", "2", "--warps", "2", "--inner-iterations", "10", "--outer-iterations", "2"]


def segments(output: str) -> list[str]:
    """What a terminal shows line by line: the output split at carriage returns and newlines."""
    return [part for part in re.split(r"[\r\n]", output) if part.strip()]


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("frames")
    rows = [ManifestRow("ava", "ava_demo_6fps.mp4", 0, "c", "train")]
    extract_frames(rows, videos_dir, out, ExtractOptions(resize=ResizeSpec(64, 48), fps=3.0), progress=False)
    return out


def test_compute_flow_bar_counts_flows_and_draws_its_end_once(frames_root: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames_root), "--out", str(tmp_path / "flow"),
                                      "--batch-pixels", str(8 * 64 * 48), *LIGHT_CLI])
    assert result.exit_code == 0, result.output
    bars = [s for s in segments(result.output) if s.startswith("compute-flow:") and "%|" in s]
    assert bars and all("/28 " in bar for bar in bars)  # 29 frames: the bar counts 28 flows, not 1 video
    assert "flow/s" in bars[-1] and "videos=1/1" in bars[-1]
    assert sum("100%" in bar for bar in bars) == 1
    assert re.search(r"compute-flow: 1 done, .*; 28 flows \([0-9.]+ flows/s\)", result.output)


def test_warnings_are_printed_on_their_own_line(tmp_path: Path, videos_dir: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    (root / "corrupted.mp4").symlink_to(videos_dir / "edge_cases" / "decord_corrupted.mp4")
    (root / "tai_chi.mp4").symlink_to(videos_dir / "kinetics_tai_chi.mp4")
    result = CliRunner().invoke(cli, ["extract-frames", "--video-root", str(root), "--out", str(tmp_path / "frames"),
                                      "--size", "32x24"])
    assert result.exit_code == 0, result.output
    shown = segments(result.output)
    warnings = [s for s in shown if "warning:" in s]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "partial video" in warnings[0]
    assert sum("100%" in s for s in shown) == 1


class _Sink:
    def __init__(self, root: Path) -> None:
        self.root = root

    def prepare(self, shards, log):
        return {s: set() for s in shards}

    def seal(self, shard: int) -> None:
        pass


def test_an_interrupted_run_reports_the_rate_of_the_work_it_did(tmp_path: Path) -> None:
    items = [WorkItem(f"v{i}", f"v{i}", 0) for i in range(3)]

    def execute(todo):
        yield Outcome("v0", "v0", "done", frames=4)
        time.sleep(0.2)
        yield Progress("v1", 3)  # flows of a video that the interruption leaves unfinished
        raise KeyboardInterrupt

    summary = run_stage("compute-flow", _Sink(tmp_path), items, execute, unit="flows", work=lambda item: 4,
                        progress=False)
    assert summary.interrupted and summary.frames == 4 and summary.processed == 7
    rate = float(re.search(r"4 flows \(([0-9.]+) flows/s\)", summary.line()).group(1))
    assert rate == pytest.approx(7 / summary.elapsed, rel=0.01) and 0 < rate < 35


def report_lines(root: Path) -> list[list[str]]:
    text = (root / "failures.rank0.tsv").read_text(encoding="utf-8")
    assert text.startswith(REPORT_HEADER)
    return [line.split("\t") for line in text.splitlines()[1:]]


def test_the_failure_report_keeps_every_run_and_survives_a_rerun_with_nothing_to_do(tmp_path: Path,
                                                                                   videos_dir: Path) -> None:
    corrupted = ManifestRow("corrupted", "edge_cases/decord_corrupted.mp4", 0, "c", "train")
    missing = ManifestRow("missing", "no_such_clip.mp4", 0, "c", "train")
    options = ExtractOptions(resize=ResizeSpec(32, 24))
    out = tmp_path / "frames"

    def run(rows: list[ManifestRow]):
        return extract_frames(rows, videos_dir, out, options, progress=False, log=lambda _: None)

    run([corrupted, missing])
    first = report_lines(out)
    assert [(line[1], line[2]) for line in first] == [("warning", "corrupted"), ("failed", "missing")]
    assert first[0][0] == first[1][0] and datetime.strptime(first[0][0], "%Y-%m-%dT%H:%M:%SZ")
    nothing = run([corrupted])
    assert nothing.skipped == 1 and nothing.done == 0
    assert report_lines(out) == first  # a rerun with nothing to do keeps the report as it was
    run([corrupted, missing])
    assert report_lines(out)[:2] == first and [line[1:3] for line in report_lines(out)[2:]] == [["failed", "missing"]]


def test_a_report_of_the_earlier_layout_gets_a_run_column(tmp_path: Path, videos_dir: Path) -> None:
    out = tmp_path / "frames"
    out.mkdir()
    (out / "failures.rank0.tsv").write_text("status\tvideo_id\tsource\treason\nfailed\told\told.mp4\tgone\n")
    missing = ManifestRow("missing", "no_such_clip.mp4", 0, "c", "train")
    extract_frames([missing], videos_dir, out, ExtractOptions(resize=ResizeSpec(32, 24)), progress=False,
                   log=lambda _: None)
    lines = report_lines(out)
    assert lines[0] == ["-", "failed", "old", "old.mp4", "gone"] and lines[1][1:3] == ["failed", "missing"]


def bar_counts(output: str, name: str) -> list[int]:
    """The counts a stage's bar showed, in order (``12/28`` -> 12)."""
    return [int(m.group(1)) for s in segments(output) if s.startswith(f"{name}:")
            for m in [re.search(r"\| *(\d+)/\d+ ", s)] if m]


def test_compute_flow_bar_moves_after_the_first_pair_on_the_cpu(frames_root: Path, tmp_path: Path) -> None:
    """Issue 28.4: the CPU's default batch (here 226 pairs of 64x48) is reached by doubling from one pair per
    worker, so the bar shows a count, a rate and an ETA after one pair, not after the whole first batch."""
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames_root), "--out", str(tmp_path / "flow"),
                                      *LIGHT_CLI])
    assert result.exit_code == 0, result.output
    counts = bar_counts(result.output, "compute-flow")
    assert counts[:6] == [0, 1, 3, 7, 15, 28], counts  # batches of 1, 2, 4, 8, then the 13 pairs left
    assert sum("100%" in s for s in segments(result.output)) == 1


def test_each_batch_moves_the_bar_before_the_next_is_solved(frames_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The first progress update comes after one pair, not after every batch the first video fills."""
    from actrec.pipeline import flow as flow_mod
    from actrec.pipeline.flow import FlowOptions, compute_flow
    from actrec.pipeline.tvl1 import TVL1Params

    timeline: list[tuple[str, int]] = []
    solver = flow_mod.opencv_tvl1_flow

    def recorded(img0, img1, params, workers=1):
        timeline.append(("solve", len(img0)))
        return solver(img0, img1, params, workers=workers)

    advance = stage_mod._StageBar.advance
    monkeypatch.setattr(flow_mod, "opencv_tvl1_flow", recorded)
    monkeypatch.setattr(stage_mod._StageBar, "advance",
                        lambda bar, video_id, units: timeline.append(("bar", units)) or advance(bar, video_id, units))
    options = FlowOptions(params=TVL1Params(nscales=2, warps=1, inner_iterations=5, outer_iterations=1),
                          backend="opencv")
    assert compute_flow(frames_root, tmp_path / "flow", options, progress=False).done == 1
    assert timeline == [(kind, n) for n in (1, 2, 4, 8, 13) for kind in ("solve", "bar")]


def test_flow_limits_ramp_from_one_pair_per_worker_on_the_cpu_only() -> None:
    from actrec.pipeline.flow import FlowOptions, flow_limits

    assert flow_limits(FlowOptions(backend="opencv"), workers=3).first_batch == 3
    assert flow_limits(FlowOptions(backend="torch"), workers=3).first_batch == 1  # solves in this process
    assert flow_limits(FlowOptions(backend="opencv", batch_pixels=10_000), workers=3).first_batch == 0  # as given


def test_a_rerun_of_a_finished_stage_draws_no_bar(frames_root: Path, tmp_path: Path) -> None:
    args = ["compute-flow", "--frames", str(frames_root), "--out", str(tmp_path / "flow"), *LIGHT_CLI]
    assert CliRunner().invoke(cli, args).exit_code == 0
    rerun = CliRunner().invoke(cli, args)
    assert rerun.exit_code == 0, rerun.output
    assert segments(rerun.output) == [rerun.output.strip()]  # the summary line alone
    assert rerun.output.startswith("compute-flow: 0 done, 1 skipped (already finished)")


@pytest.fixture(scope="module")
def two_videos(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("two_videos")
    rows = [ManifestRow("ava", "ava_demo_6fps.mp4", 0, "c", "train"),
            ManifestRow("tai_chi", "kinetics_tai_chi.mp4", 0, "c", "train")]
    extract_frames(rows, videos_dir, out, ExtractOptions(resize=ResizeSpec(32, 24), fps=1.0), progress=False)
    return out


def test_ctrl_c_counts_the_video_its_writer_was_finishing(two_videos: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 28.6: Ctrl-C while the first video is being written (its outcome not reported yet) used to report
    "0 done ... 0 flows" although the store then held the video and the rerun skipped it."""
    from actrec.pipeline import flow as flow_mod, flow_batch
    from actrec.pipeline.flow import FlowOptions, compute_flow
    from actrec.pipeline.frames import FrameStore
    from actrec.pipeline.tvl1 import TVL1Params

    first = FrameStore(two_videos).num_frames("ava") - 1  # pairs of the first video in job order
    write = flow_batch.write_video

    def slow_write(*args):
        time.sleep(1.0)  # still writing when the interrupt comes
        return write(*args)

    solved = []
    solver = flow_mod.opencv_tvl1_flow

    def interrupted_after_the_first_video(img0, img1, params, workers=1):
        if len(solved) == first:
            raise KeyboardInterrupt  # Ctrl-C during the second video's first pair
        solved.append(len(img0))
        return solver(img0, img1, params, workers=workers)

    monkeypatch.setattr(flow_batch, "write_video", slow_write)
    monkeypatch.setattr(flow_mod, "opencv_tvl1_flow", interrupted_after_the_first_video)
    options = FlowOptions(params=TVL1Params(nscales=1, warps=1, inner_iterations=2, outer_iterations=1),
                          backend="opencv", batch_pixels=32 * 24)  # one pair per batch
    summary = compute_flow(two_videos, tmp_path / "flow", options, progress=False)
    assert summary.interrupted and (summary.done, summary.frames) == (1, first)
    assert summary.line().startswith(f"compute-flow: 1 done, 0 skipped (already finished), 0 failed, 0 with "
                                     f"warnings; {first} flows")
    monkeypatch.setattr(flow_mod, "opencv_tvl1_flow", solver)
    rerun = compute_flow(two_videos, tmp_path / "flow", options, progress=False)
    assert (rerun.skipped, rerun.done, rerun.interrupted) == (1, 1, False)


def test_ctrl_c_outside_the_executor_still_collects_what_it_finishes(tmp_path: Path) -> None:
    """Ctrl-C while the stage handles an event (here: sealing a shard) is thrown into the executor, which reports
    the videos it had handed on before it stops."""
    items = [WorkItem("v0", "v0", 0), WorkItem("v1", "v1", 1), WorkItem("v2", "v2", 2)]

    class InterruptedSeal(_Sink):
        sealed: list[int] = []

        def seal(self, shard: int) -> None:
            self.sealed.append(shard)
            if len(self.sealed) == 1:
                raise KeyboardInterrupt

    def execute(todo):
        try:
            yield Outcome("v0", "v0", "done", frames=4, nbytes=10)
            yield Outcome("v2", "v2", "done", frames=4, nbytes=10)  # never reached
        except KeyboardInterrupt:
            yield Outcome("v1", "v1", "done", frames=3, nbytes=7)  # its writer was finishing it
            raise

    summary = run_stage("compute-flow", InterruptedSeal(tmp_path), items, execute, unit="flows", progress=False)
    assert summary.interrupted and (summary.done, summary.frames, summary.nbytes) == (2, 7, 17)
    assert InterruptedSeal.sealed == [0, 1]  # the collected video's shard is sealed too


def test_a_count_of_one_is_singular_in_the_summary(tmp_path: Path) -> None:
    items = [WorkItem("v0", "v0", 0), WorkItem("v1", "v1", 0)]
    summary = run_stage("compute-flow", _Sink(tmp_path), items,
                        lambda todo: iter([Outcome("v0", "v0", "done", frames=1), Outcome("v1", "v1", "done")]),
                        unit="flows", progress=False)
    assert "; 1 flow (" in summary.line() and "flows/s" in summary.line()
