"""Store writers on bad input: manifest paths that leave --video-root, and a store folder on a read-only file
system; each is one line and exit code 1 before any work."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, outside_root, write_manifest
from actrec.pipeline.frames import FrameStore


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


def test_manifest_paths_leaving_the_video_root_are_refused_unless_allowed(tmp_path: Path, videos_dir: Path) -> None:
    root = videos_dir / "edge_cases"
    rows = [ManifestRow("rot", "decord_rotation90_keyboard.mov", 0, "c", "train"),
            ManifestRow("ava", "../ava_demo_6fps.mp4", 0, "c", "train"),
            ManifestRow("abs", str(videos_dir / "kinetics_tai_chi.mp4"), 0, "c", "train"),
            ManifestRow("in", "sub/../decord_rotation90_keyboard.mov", 0, "c", "train")]
    assert [r.video_id for r in outside_root(rows)] == ["ava", "abs"]  # judged on the text: "sub/.." stays inside
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, rows[:3])
    args = ["extract-frames", "--manifest", str(manifest), "--video-root", str(root), "--out", str(tmp_path / "f"),
            "--size", "64x48", "--fps", "3", "--quiet"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and not (tmp_path / "f").exists()
    assert error_lines(refused.output) == [
        f"error: 2 of the 3 manifest paths leave the video root {root} (e.g. '../ava_demo_6fps.mp4'); fix the "
        "manifest or --video-root, or pass --allow-outside-root to read them"]
    allowed = CliRunner().invoke(cli, [*args, "--allow-outside-root"])
    assert allowed.exit_code == 0, allowed.output
    warnings = [line for line in allowed.output.splitlines() if "leave the video root" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 2 of the 3 manifest paths")
    with FrameStore(tmp_path / "f") as store:
        assert sorted(store.video_ids) == ["abs", "ava", "rot"]


def test_a_store_on_a_read_only_file_system_is_one_line(read_only_dir: Path, tmp_path: Path,
                                                        videos_dir: Path) -> None:
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [ManifestRow("ava", "ava_demo_6fps.mp4", 0, "c", "train")])
    out = read_only_dir / "frames"
    result = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root",
                                      str(videos_dir), "--out", str(out), "--size", "64x48", "--quiet"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"error: {out}: cannot create a frames store here (Read-only file system)"]

    frames = tmp_path / "frames"  # a real frame store, then its flow on the read-only file system
    assert CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                    "--out", str(frames), "--size", "64x48", "--fps", "3", "--quiet"]).exit_code == 0
    result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames), "--out", str(read_only_dir),
                                      "--backend", "opencv", "--quiet"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"error: {read_only_dir}: cannot create a flow store here (Read-only file "
                                          "system)"]
