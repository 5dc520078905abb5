"""Damaged stores, for real: bytes flipped in written shards of real clips are caught on read and named, a shard
that cannot be opened costs only its videos, and verify-store finds, lists and removes the damage so that a rerun
of the writer computes it again. Stores written before checksums keep reading."""

from __future__ import annotations

import pickle
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow, write_manifest
from actrec.errors import StoreError, StoreReadError
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import FrameStore
from actrec.pipeline.store import META_FILE, VIDEOS, video_list_path
from actrec.pipeline.store_checks import CRC_ATTR, crc32_of, fletcher32
from actrec.pipeline.tvl1 import TVL1Params

# One video per shard: crc32(id) % 3 is 1, 2 and 0.
CLIPS = {"ava": "ava_demo_6fps.mp4", "tai": "kinetics_tai_chi.mp4", "eye": "ucf101_ApplyEyeMakeup_xvid.avi"}
LIGHT = TVL1Params(nscales=2, warps=2, inner_iterations=10, outer_iterations=2)
EXTRACT = ["--size", "64x48", "--fps", "3", "--videos-per-shard", "1", "--quiet"]
FLOW = ["--backend", "opencv", "--nscales", "2", "--warps", "2", "--inner-iterations", "10",
        "--outer-iterations", "2", "--videos-per-shard", "1", "--quiet"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "m.csv"
    write_manifest(path, [ManifestRow(vid, rel, 0, "c", "train") for vid, rel in CLIPS.items()])
    return path


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory: pytest.TempPathFactory, manifest: Path, videos_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("frames") / "frames"
    result = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                      "--out", str(out), *EXTRACT])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("frames-*.h5"))) == 3
    return out


@pytest.fixture(scope="module")
def flow_stores(tmp_path_factory: pytest.TempPathFactory, frames_root: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow")
    for codec in ("zstd", "gzip", "none"):
        summary = compute_flow(frames_root, root / codec, FlowOptions(params=LIGHT, backend="opencv",
                                                                       compression=codec),
                               videos_per_shard=1, progress=False)
        assert summary.done == 3
    return {codec: root / codec for codec in ("zstd", "gzip", "none")}


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock*", "failures.*"))
    return dst


def flip(path: Path, offset: int, count: int = 8) -> None:
    """Invert ``count`` bytes of a file at ``offset``: bit rot, as a disk or a copy would make it."""
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


def shard_of(root: Path, video_id: str) -> Path:
    kind = "frames" if (root / "frames-00000.h5").exists() else "flow"
    return root / f"{kind}-{zlib.crc32(video_id.encode()) % 3:05d}.h5"


def entry_offsets(shard: Path, video_id: str) -> list[int]:
    """File offsets of the middle of every stored entry of a video: its flow chunks, or its JPEG bytes (found in
    the file, where HDF5's heap keeps them)."""
    with h5py.File(shard, "r") as f:
        dset = f[VIDEOS][video_id]["flow" if "flow" in f[VIDEOS][video_id] else "frames"]
        if dset.chunks:
            infos = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
            return [info.byte_offset + info.size // 2 for info in infos]
        items = list(dset[()])
    data = shard.read_bytes()
    return [data.index(item.tobytes()) + len(item) // 2 for item in items]


def read_all(root: Path) -> dict[str, np.ndarray]:
    """Every entry of every video, as the store's reader gives it (decoded frames, flow codes)."""
    if (root / "frames-00000.h5").exists():
        with FrameStore(root) as store:
            return {v: store.read(v) for v in store.video_ids}
    with FlowStore(root) as store:
        return {v: store.read_stack(v, 0, store.num_flows(v)) for v in store.video_ids}


def assert_raises_or_equal(root: Path, original: dict[str, np.ndarray]) -> int:
    """Read every video: each read gives the original data or raises StoreError; return how many raised."""
    raised = 0
    for video_id, expected in original.items():
        reader = FrameStore(root) if (root / "frames-00000.h5").exists() else FlowStore(root)
        with reader:
            try:
                got = reader.read(video_id) if isinstance(reader, FrameStore) else reader.read_stack(
                    video_id, 0, reader.num_flows(video_id))
            except StoreError:
                raised += 1
                continue
        np.testing.assert_array_equal(got, expected)
    return raised


@pytest.mark.parametrize("store", ["frames", "zstd", "gzip", "none"])
def test_eight_flipped_bytes_anywhere_in_a_shard_raise_and_never_return_other_data(
        store: str, frames_root: Path, flow_stores: dict[str, Path], tmp_path: Path) -> None:
    root = frames_root if store == "frames" else flow_stores[store]
    original = read_all(root)
    shard = shard_of(root, "tai")
    entries = entry_offsets(shard, "tai")
    rng = np.random.default_rng(0)
    everywhere = sorted(rng.integers(0, shard.stat().st_size - 8, size=12))  # header, metadata, data, free space
    for n, offset in enumerate([*entries[:: max(1, len(entries) // 6)], *everywhere]):
        damaged = copy_store(root, tmp_path / f"{store}_{n}")
        flip(shard_of(damaged, "tai"), int(offset))
        raised = assert_raises_or_equal(damaged, original)
        if offset in entries:
            assert raised == 1, f"a flip in an entry at {offset} went unnoticed"


def test_a_damaged_entry_is_named_by_shard_video_and_index(frames_root: Path, flow_stores: dict[str, Path],
                                                           tmp_path: Path) -> None:
    flow = copy_store(flow_stores["zstd"], tmp_path / "flow")
    shard = shard_of(flow, "tai")
    flip(shard, entry_offsets(shard, "tai")[7])
    with FlowStore(flow) as store:
        np.testing.assert_array_equal(store.read_stack("tai", 0, 7), FlowStore(flow_stores["zstd"]).read_stack(
            "tai", 0, 7))  # the flows before the damaged one still read
        with pytest.raises(StoreReadError) as caught:
            store.read_stack("tai", 3, 10)
    assert str(caught.value) == f"{shard}: video 'tai', flow 7: checksum mismatch (Fletcher-32): the shard is damaged"
    error = pickle.loads(pickle.dumps(caught.value))  # as a DataLoader worker hands it over
    assert (error.shard, error.video_id, error.index) == (str(shard), "tai", 7) and str(error) == str(caught.value)

    frames = copy_store(frames_root, tmp_path / "frames")
    shard = shard_of(frames, "eye")
    with h5py.File(shard, "a") as f:  # a JPEG that is not one but whose checksum matches: decoding must fail
        dset = f[VIDEOS]["eye"]["frames"]
        dset[4] = np.frombuffer(b"not a jpeg at all", np.uint8)
        dset.attrs[CRC_ATTR] = crc32_of(list(dset[()]))
    with FrameStore(frames) as store, pytest.raises(StoreReadError,
                                                    match=rf"^{shard}: video 'eye', frame 4: stored JPEG cannot be "
                                                          "decoded$"):
        store.read("eye", [2, 4])


def write_old_format(src: Path, dst: Path) -> Path:
    """The store at ``src`` written again as actrec wrote stores before checksums and video lists: no fletcher32, no
    CRC-32 attribute (``_create_dataset`` of be73dc1)."""
    dst.mkdir()
    shutil.copy(src / META_FILE, dst / META_FILE)
    for shard in src.glob("*-*.h5"):
        with h5py.File(shard, "r") as f, h5py.File(dst / shard.name, "w", libver="latest") as out:
            out.attrs.update(dict(f.attrs))
            for video_id, group in f[VIDEOS].items():
                target = out.create_group(f"{VIDEOS}/{video_id}")
                target.attrs.update(dict(group.attrs))
                for name, dset in group.items():
                    if h5py.check_vlen_dtype(dset.dtype):
                        items = np.empty(dset.shape[0], dtype=object)
                        items[:] = list(dset[()])
                        target.create_dataset(name, data=items, dtype=h5py.vlen_dtype(np.uint8))
                    else:
                        target.create_dataset(name, data=dset[()], chunks=dset.chunks, compression=dset.compression,
                                              compression_opts=dset.compression_opts)
    return dst


def test_stores_written_before_checksums_still_read_and_verify(frames_root: Path, flow_stores: dict[str, Path],
                                                              tmp_path: Path) -> None:
    for name, root in [("frames", frames_root), ("flow", flow_stores["gzip"])]:
        old = write_old_format(root, tmp_path / name)
        with h5py.File(next(old.glob("*-*.h5")), "r") as f:
            dset = next(iter(f[VIDEOS].values()))[name]
            assert not dset.fletcher32 and CRC_ATTR not in dset.attrs
        for video_id, expected in read_all(root).items():
            np.testing.assert_array_equal(read_all(old)[video_id], expected)
        result = CliRunner().invoke(cli, ["verify-store", str(old), "--quiet"])
        assert result.exit_code == 0, result.output
        assert "3 videos in 3 shards, 3 good, 0 bad" in result.output
        assert "3 videos written without checksums" in result.output


def test_verify_store_lists_damaged_videos_and_repair_lets_the_rerun_redo_only_them(
        frames_root: Path, manifest: Path, videos_dir: Path, tmp_path: Path) -> None:
    store = copy_store(frames_root, tmp_path / "frames")
    clean = CliRunner().invoke(cli, ["verify-store", str(store), "--quiet"])
    assert clean.exit_code == 0 and "3 videos in 3 shards, 3 good, 0 bad" in clean.output, clean.output
    for video_id, entry in [("ava", 2), ("eye", 0)]:
        flip(shard_of(store, video_id), entry_offsets(shard_of(store, video_id), video_id)[entry])
    found = CliRunner().invoke(cli, ["verify-store", str(store)])
    assert found.exit_code == 1
    bad = [line for line in found.output.splitlines() if line.startswith("bad: ")]
    assert len(bad) == 2
    for video_id, frame in [("ava", 2), ("eye", 0)]:
        assert any(line.startswith(f"bad: {shard_of(store, video_id)}: video {video_id!r}, frame {frame}: checksum "
                                   "mismatch (CRC-32 ") for line in bad), bad
    assert "3 videos in 3 shards, 1 good, 2 bad" in found.output

    repaired = CliRunner().invoke(cli, ["verify-store", str(store), "--repair", "--quiet"])
    assert repaired.exit_code == 1 and "removed 0 unreadable shards and 2 damaged videos" in repaired.output
    with FrameStore(store) as reader:
        assert reader.video_ids == ["tai"]
    assert video_list_path(shard_of(store, "ava")).read_text() == ""
    rerun = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                     "--out", str(store), *EXTRACT])
    assert rerun.exit_code == 0 and "2 done, 1 skipped" in rerun.output, rerun.output
    for video_id, expected in read_all(frames_root).items():
        np.testing.assert_array_equal(read_all(store)[video_id], expected)
    assert CliRunner().invoke(cli, ["verify-store", str(store), "--quiet"]).exit_code == 0


@pytest.mark.parametrize("with_lists", [True, False])
def test_a_shard_with_a_damaged_header_costs_only_its_videos_and_a_rerun_rebuilds_it(
        frames_root: Path, flow_stores: dict[str, Path], tmp_path: Path, with_lists: bool) -> None:
    flow = copy_store(flow_stores["zstd"], tmp_path / "flow")
    if not with_lists:  # a store written before video lists
        for listed in flow.glob("*.videos.txt"):
            listed.unlink()
    broken = shard_of(flow, "ava")
    flip(broken, 50)  # the case: 8 bytes at offset 50 of one flow shard of 3
    original = read_all(flow_stores["zstd"])
    with FlowStore(flow) as store:
        assert "ava" in store and list(store.broken_shards) == [broken]
        for video_id in ("tai", "eye"):
            np.testing.assert_array_equal(store.read_stack(video_id, 0, store.num_flows(video_id)),
                                          original[video_id])
        with pytest.raises(StoreReadError) as caught:
            store.num_flows("ava")
    message = str(caught.value)
    assert message.startswith(f"{broken}: video 'ava': its shard cannot be opened") and "\n" not in message
    assert "verify-store" in message

    listing = CliRunner().invoke(cli, ["verify-store", str(flow), "--quiet"])
    assert listing.exit_code == 1
    assert f"bad shard: {broken}: shard cannot be" in listing.output
    assert (f"bad: {broken}: video 'ava': in the unreadable shard" in listing.output) == with_lists

    rerun = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames_root), "--out", str(flow), *FLOW])
    assert rerun.exit_code == 0, rerun.output
    assert f"warning: {broken}: shard cannot be" in rerun.output and "written again" in rerun.output
    assert "1 done, 2 skipped" in rerun.output
    for video_id, expected in original.items():
        np.testing.assert_array_equal(read_all(flow)[video_id], expected)


def test_repair_removes_an_unreadable_shard_so_that_a_rerun_recomputes_it(frames_root: Path, manifest: Path,
                                                                          videos_dir: Path, tmp_path: Path) -> None:
    store = copy_store(frames_root, tmp_path / "frames")
    broken = shard_of(store, "tai")
    flip(broken, 50)
    repaired = CliRunner().invoke(cli, ["verify-store", str(store), "--repair", "--quiet"])
    assert repaired.exit_code == 1 and "removed 1 unreadable shard and 1 damaged video" in repaired.output
    assert not broken.exists() and not video_list_path(broken).exists()
    with FrameStore(store) as reader:
        assert sorted(reader.video_ids) == ["ava", "eye"] and "tai" not in reader
    rerun = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                     "--out", str(store), *EXTRACT])
    assert rerun.exit_code == 0 and "1 done, 2 skipped" in rerun.output, rerun.output
    np.testing.assert_array_equal(read_all(store)["tai"], read_all(frames_root)["tai"])


def test_our_fletcher32_is_hdf5s_on_every_stored_chunk(flow_stores: dict[str, Path]) -> None:
    """The checksum that tells a mismatch from a decompression failure agrees with HDF5's on real chunks."""
    for root in flow_stores.values():
        for shard in root.glob("flow-*.h5"):
            with h5py.File(shard, "r") as f:
                for group in f[VIDEOS].values():
                    dset = group["flow"]
                    for i in range(dset.id.get_num_chunks()):
                        _, raw = dset.id.read_direct_chunk(dset.id.get_chunk_info(i).chunk_offset)
                        assert fletcher32(raw[:-4]) == int.from_bytes(raw[-4:], "little")


def test_extract_frames_rerun_rebuilds_a_frame_shard_with_a_damaged_header(frames_root: Path, manifest: Path,
                                                                           videos_dir: Path, tmp_path: Path) -> None:
    store = copy_store(frames_root, tmp_path / "frames")
    broken = shard_of(store, "eye")
    flip(broken, 50)
    with FrameStore(store) as reader:
        with pytest.raises(StoreReadError, match=rf"^{broken}: video 'eye': its shard cannot be opened"):
            reader.read("eye", [0])
        np.testing.assert_array_equal(reader.read("ava"), read_all(frames_root)["ava"])
    rerun = CliRunner().invoke(cli, ["extract-frames", "--manifest", str(manifest), "--video-root", str(videos_dir),
                                     "--out", str(store), *EXTRACT])
    assert rerun.exit_code == 0 and "1 done, 2 skipped" in rerun.output, rerun.output
    assert f"warning: {broken}: shard cannot be read" in rerun.output
    for video_id, expected in read_all(frames_root).items():
        np.testing.assert_array_equal(read_all(store)[video_id], expected)
