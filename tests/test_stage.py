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
