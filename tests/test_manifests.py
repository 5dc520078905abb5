"""Manifests built from the real official split files, with their exact published counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.build import (check_videos, folder_manifest, hmdb51_manifest, kinetics_manifest,
                                         scan_videos, ucf101_manifest)
from actrec.data_manifests.manifest import ManifestRow, class_names, read_manifest, write_manifest
from actrec.errors import InputError

UCF_COUNTS = {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}


@pytest.fixture(scope="module")
def splits(shared_data: Path) -> Path:
    return shared_data / "splits"


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_official_counts(splits: Path, split: int) -> None:
    build = ucf101_manifest(splits / "ucf101", split)
    assert build.counts() == {"train": UCF_COUNTS[split][0], "test": UCF_COUNTS[split][1]}
    assert build.problems == []
    names = class_names(build.rows)
    assert len(names) == 101 and names[0] == "ApplyEyeMakeup" and names[100] == "YoYo"
    first_line = (splits / "ucf101" / f"trainlist0{split}.txt").read_text().split()[0]
    assert build.rows[0] == ManifestRow(Path(first_line).stem, first_line, 0, "ApplyEyeMakeup", "train")
    # test lists have no label column: the class folder gives it
    assert all(r.label_name == r.path.split("/")[0] for r in build.rows if r.split == "test")


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_official_counts(splits: Path, split: int) -> None:
    root = splits / "hmdb51"
    build = hmdb51_manifest(root / "testTrainMulti_7030_splits", split, root / "class_list.txt")
    assert build.counts() == {"train": 3570, "test": 1530}
    assert build.problems == []
    names = class_names(build.rows)
    assert names == (root / "class_list.txt").read_text().split()
    assert len(names) == 51
    assert all(r.path.startswith(r.label_name + "/") for r in build.rows)


def test_hmdb51_default_class_order_is_sorted(splits: Path) -> None:
    build = hmdb51_manifest(splits / "hmdb51" / "testTrainMulti_7030_splits", 1)
    names = class_names(build.rows)
    assert names == sorted(names) and len(names) == 51


def test_kinetics400_val(splits: Path) -> None:
    k = splits / "kinetics400"
    build = kinetics_manifest([k / "kinetics-400_val.csv"], k / "label_map_k400.txt")
    assert build.counts() == {"val": 19906}
    assert build.problems == []
    names = class_names(build.rows)
    assert len(names) == 400 and names == (k / "label_map_k400.txt").read_text().splitlines()
    row = build.rows[0]
    assert row == ManifestRow("0wR5jVB-WPk_000417_000427", "0wR5jVB-WPk_000417_000427.mp4", 0, "abseiling", "val")


def test_kinetics_pattern_and_unlabelled_test_csv(splits: Path) -> None:
    k = splits / "kinetics400"
    build = kinetics_manifest([k / "kinetics-400_test_head20.csv"], k / "label_map_k400.txt",
                              pattern="{split}/{youtube_id}.mp4")
    assert len(build.rows) == 20
    assert all(r.label == -1 and r.split == "test" for r in build.rows)
    assert build.rows[0].path == "test/--6bJUbfpnQ.mp4"


def test_kinetics_unknown_label_is_reported(tmp_path: Path, splits: Path) -> None:
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split,is_cc\nabseiling,a,1,11,train,0\n"
                   "juggling fire sticks,b,2,12,train,0\n")
    build = kinetics_manifest([csv], splits / "kinetics400" / "label_map_k400.txt")
    assert [r.video_id for r in build.rows] == ["a_000001_000011"]
    assert len(build.unknown_labels) == 1 and "juggling fire sticks" in build.unknown_labels[0]


def test_duplicates_and_bad_labels_are_reported(tmp_path: Path, splits: Path) -> None:
    ucf = tmp_path / "ucf"
    ucf.mkdir()
    (ucf / "classInd.txt").write_bytes((splits / "ucf101" / "classInd.txt").read_bytes())
    (ucf / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi 3\nArchery/v_Archery_g01_c01.avi 3\n"
                                         "Archery/v_Archery_g01_c02.avi 7\n")
    (ucf / "testlist01.txt").write_text("Archery/v_Archery_g02_c01.avi\n")
    build = ucf101_manifest(ucf, 1)
    assert [r.video_id for r in build.rows] == ["v_Archery_g01_c01", "v_Archery_g02_c01"]
    assert len(build.duplicates) == 1 and len(build.unknown_labels) == 1
    assert "index 7" in build.unknown_labels[0]


def test_missing_videos_are_reported_and_dropped(tmp_path: Path) -> None:
    (tmp_path / "Archery").mkdir()
    (tmp_path / "Archery" / "a.avi").write_bytes(b"x")
    rows = [ManifestRow("a", "Archery/a.avi", 0, "Archery", "train"), ManifestRow("b", "Archery/b.avi", 0,
                                                                                   "Archery", "train")]
    from actrec.data_manifests.build import ManifestBuild
    build = check_videos(ManifestBuild(rows), tmp_path)
    assert [r.video_id for r in build.rows] == ["a"] and build.missing == [str(tmp_path / "Archery/b.avi")]
    assert len(check_videos(ManifestBuild(rows), tmp_path, drop_missing=False).rows) == 2


def test_folder_manifest_with_and_without_split_folders(tmp_path: Path) -> None:
    for rel in ["run/x1.mp4", "jump/y1.avi", "jump/notes.txt"]:
        (tmp_path / "flat" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "flat" / rel).write_bytes(b"v")
    flat = folder_manifest(tmp_path / "flat")
    assert [(r.video_id, r.label, r.label_name, r.split) for r in flat.rows] == [("y1", 0, "jump", "train"),
                                                                                 ("x1", 1, "run", "train")]
    for rel in ["train/run/a.mp4", "val/jump/b.mp4", "test/run/c.mp4"]:
        (tmp_path / "split" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "split" / rel).write_bytes(b"v")
    split = folder_manifest(tmp_path / "split")
    assert {r.video_id: (r.split, r.label_name) for r in split.rows} == {
        "a": ("train", "run"), "b": ("val", "jump"), "c": ("test", "run")}
    assert [r.video_id for r in scan_videos(tmp_path / "flat").rows] == ["y1", "x1"]


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    rows = [ManifestRow("a", "c/a.mp4", 0, "c", "train"), ManifestRow("b", "d/b.mp4", 1, "d", "test")]
    path = tmp_path / "m.csv"
    assert write_manifest(path, rows) == 2
    assert read_manifest(path) == rows
    assert read_manifest(path, ["test"]) == rows[1:]
    path.write_text("video_id,path,label,label_name,split\na,x.mp4,zero,c,train\n")
    with pytest.raises(InputError, match=r"m.csv:2: malformed"):
        read_manifest(path)
    path.write_text("id,file\n")
    with pytest.raises(InputError, match="not an actrec manifest"):
        read_manifest(path)
    path.write_text("video_id,path,label,label_name,split\na,x.mp4,0,c,train\na,y.mp4,0,c,test\n")
    with pytest.raises(InputError, match="duplicate video_id 'a'"):
        read_manifest(path)


def test_make_manifest_cli(tmp_path: Path, splits: Path) -> None:
    out = tmp_path / "ucf_s2.csv"
    result = CliRunner().invoke(cli, ["make-manifest", "ucf101", "--splits-dir", str(splits / "ucf101"),
                                      "--split", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "13320 videos (test 3734, train 9586)" in result.output
    assert len(read_manifest(out, ["train"])) == 9586
    result = CliRunner().invoke(cli, ["make-manifest", "hmdb51", "-o", str(out)])
    assert result.exit_code == 2 and "needs --splits-dir" in result.output
    # every video missing under --video-root: warnings, then one error line; nothing is written
    (tmp_path / "UCF-101").mkdir()
    empty = tmp_path / "none.csv"
    result = CliRunner().invoke(cli, ["make-manifest", "ucf101", "--splits-dir", str(splits / "ucf101"), "--video-root",
                                      str(tmp_path / "UCF-101"), "-o", str(empty)])
    assert result.exit_code == 1 and not empty.exists()
    assert result.output.splitlines()[-1] == (f"error: {empty}: not written, no video left (0 duplicates, "
                                              "0 unknown labels, 13320 missing)")


def test_make_manifest_folder_reports_videos_outside_class_folders(tmp_path: Path, videos_dir: Path) -> None:
    """On the real clips folder: the clips of edge_cases/ are listed, the top-level clips are named as left out."""
    from actrec.data_manifests.build import VIDEO_EXTENSIONS

    top = sorted(p.name for p in videos_dir.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    in_class = sorted(p.stem for p in (videos_dir / "edge_cases").iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    assert top and in_class
    out = tmp_path / "real.csv"
    result = CliRunner().invoke(cli, ["make-manifest", "folder", "--video-root", str(videos_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"warning: {len(top)} videos left out, not in a class folder (the layout is <root>/<class>/<video>" \
        in result.output and top[0] in result.output
    assert f"{len(in_class)} videos (train {len(in_class)})" in result.output
    assert f"{len(top)} outside class folders" in result.output
    rows = read_manifest(out)
    assert sorted(r.video_id for r in rows) == in_class and {r.label_name for r in rows} == {"edge_cases"}


def test_make_manifest_folder_with_no_class_folder_is_an_error(tmp_path: Path) -> None:
    for name in ["a.mp4", "b.avi", "notes.txt"]:
        (tmp_path / "clips" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "clips" / name).write_bytes(b"v")
    out = tmp_path / "m.csv"
    runner = CliRunner()
    result = runner.invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "clips"), "-o", str(out)])
    assert result.exit_code == 1 and not out.exists()
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'clips'}: no videos in class folders (the layout is <root>/<class>/<video> or "
        "<root>/<train|val|test>/<class>/<video>); 2 videos outside them have no class"]
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "empty"), "-o", str(out)])
    assert empty.exit_code == 1 and "no videos in class folders" in empty.output and "outside" not in empty.output


def test_folder_manifest_split_layout_reports_videos_under_split_folders(tmp_path: Path) -> None:
    for rel in ["train/run/a.mp4", "train/stray.mp4", "test/run/c.mp4", "top.mkv", "test/jump/readme.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"v")
    build = folder_manifest(tmp_path)
    assert [(r.video_id, r.split, r.label) for r in build.rows] == [("c", "test", 0), ("a", "train", 0)]
    assert build.unplaced == ["top.mkv", "train/stray.mp4"]
    assert build.problems == ["2 videos left out, not in a class folder (the layout is <root>/<class>/<video> or "
                              "<root>/<train|val|test>/<class>/<video>): top.mkv, train/stray.mp4"]


def test_kinetics_csv_row_with_wrong_field_count_is_one_line_error(tmp_path: Path, splits: Path) -> None:
    k = splits / "kinetics400"
    lines = (k / "kinetics-400_val.csv").read_text().splitlines()[:4]
    short, long_ = tmp_path / "short.csv", tmp_path / "long.csv"
    short.write_text("\n".join(lines[:3] + [",".join(lines[3].split(",")[:3])]) + "\n")  # line 4: 3 of 6 fields
    long_.write_text("\n".join(lines[:2] + [lines[2] + ",extra"]) + "\n")
    runner = CliRunner()
    for path, line, fields in [(short, 4, 3), (long_, 3, 7)]:
        result = runner.invoke(cli, ["make-manifest", "kinetics400", "--csv", str(path), "-o", str(tmp_path / "k.csv")])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines() == [
            f"error: {path}:{line}: row has {fields} fields, the header (label,youtube_id,time_start,time_end,split,"
            "is_cc) has 6"]
    bad_time = tmp_path / "bad_time.csv"
    bad_time.write_text(lines[0] + "\nabseiling,abc,1.5,11,val,0\n")
    with pytest.raises(InputError, match=r"bad_time.csv:2: cannot name row"):
        kinetics_manifest([bad_time])
    # the real validation CSV still loads through the command
    out = tmp_path / "k400_val.csv"
    result = runner.invoke(cli, ["make-manifest", "kinetics400", "--csv", str(k / "kinetics-400_val.csv"),
                                 "--label-map", str(k / "label_map_k400.txt"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "19906 videos (val 19906); 0 duplicates" in result.output


def _flat_tree(root: Path, videos_dir: Path, sizes: dict[str, int]) -> Path:
    """<root>/<class>/<class>_<i>.mp4, each a link to a real clip."""
    clips = sorted(p for p in videos_dir.glob("kinetics_*.mp4"))
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{name}_{i:02d}.mp4").symlink_to(clips[i % len(clips)])
    return root


def test_make_manifest_folder_holds_out_a_share_of_every_class(tmp_path: Path, videos_dir: Path) -> None:
    """Issue 28.7: a flat <class>/<video> tree no longer puts everything in train."""
    root = _flat_tree(tmp_path / "clips", videos_dir, {"juggle": 10, "run": 20, "swim": 3, "yawn": 1})
    out = tmp_path / "m.csv"

    def make(*extra: str):
        return CliRunner().invoke(cli, ["make-manifest", "folder", "--video-root", str(root), "-o", str(out),
                                        "--test-fraction", "0.2", "--val-fraction", "0.1", *extra])

    result = make("--seed", "3")
    assert result.exit_code == 0, result.output
    splits = {(r.label_name, r.split): 0 for r in read_manifest(out)}
    for r in read_manifest(out):
        splits[(r.label_name, r.split)] += 1
    assert splits == {("juggle", "test"): 2, ("juggle", "val"): 1, ("juggle", "train"): 7,
                      ("run", "test"): 4, ("run", "val"): 2, ("run", "train"): 14,
                      ("swim", "test"): 1, ("swim", "train"): 2, ("yawn", "train"): 1}
    assert "make-manifest: 34 videos (test 7, train 24, val 3); 0 duplicates, 0 unknown labels, 0 missing" \
        in result.output
    assert ("warning: 2 classes are too small to give every held-out split a video: swim (3 videos), "
            "yawn (1 video)") in result.output
    first = out.read_bytes()
    assert make("--seed", "3").exit_code == 0 and out.read_bytes() == first  # the same seed, the same manifest
    assert make("--seed", "4").exit_code == 0 and out.read_bytes() != first
    held = {r.video_id for r in read_manifest(out) if r.split != "train"}
    (root / "juggle" / "juggle_new.mp4").symlink_to(videos_dir / "kinetics_tai_chi.mp4")
    assert make("--seed", "4").exit_code == 0
    moved = held ^ {r.video_id for r in read_manifest(out) if r.split != "train"}
    assert len(moved - {"juggle_new"}) <= 2  # a new video moves at most two others, not a reshuffle


def test_held_out_fractions_are_refused_where_splits_exist(tmp_path: Path, splits: Path, videos_dir: Path) -> None:
    runner = CliRunner()
    ucf = runner.invoke(cli, ["make-manifest", "ucf101", "--splits-dir", str(splits / "ucf101"), "-o",
                              str(tmp_path / "u.csv"), "--test-fraction", "0.2"])
    assert ucf.exit_code == 2 and "ucf101 has official splits; --test-fraction and --val-fraction are for folder" \
        in ucf.output
    _flat_tree(tmp_path / "split" / "train", videos_dir, {"run": 2})
    _flat_tree(tmp_path / "split" / "test", videos_dir, {"run": 1})
    tree = runner.invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "split"), "-o",
                               str(tmp_path / "s.csv"), "--val-fraction", "0.1"])
    assert tree.exit_code == 1 and tree.output == (
        f"error: {tmp_path / 'split'}: the tree has its own split folders (test, train); --test-fraction and "
        "--val-fraction are for a flat <class>/<video> layout\n")
    _flat_tree(tmp_path / "flat", videos_dir, {"run": 2})
    too_much = runner.invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "flat"), "-o",
                                   str(tmp_path / "f.csv"), "--test-fraction", "0.6", "--val-fraction", "0.4"])
    assert too_much.exit_code == 1 and "must be at least 0 and sum to less than 1" in too_much.output


def test_counts_of_one_are_singular(tmp_path: Path, videos_dir: Path) -> None:
    """Issue 28.7: "1 video outside them have no class"."""
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").symlink_to(videos_dir / "kinetics_tai_chi.mp4")
    result = CliRunner().invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "clips"), "-o",
                                      str(tmp_path / "m.csv")])
    assert result.exit_code == 1 and result.output.rstrip().endswith("; 1 video outside them has no class")
    _flat_tree(tmp_path / "one", videos_dir, {"run": 1})
    (tmp_path / "one" / "loose.mp4").symlink_to(videos_dir / "kinetics_tai_chi.mp4")
    result = CliRunner().invoke(cli, ["make-manifest", "folder", "--video-root", str(tmp_path / "one"), "-o",
                                      str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "warning: 1 video left out, not in a class folder" in result.output
    assert "make-manifest: 1 video (train 1); 0 duplicates, 0 unknown labels, 0 missing, 1 outside class folders" \
        in result.output
