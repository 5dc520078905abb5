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
