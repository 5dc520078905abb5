"""Every flow-store codec of ``COMPRESSIONS`` stores the same uint8 codes, losslessly, and records itself.

Stores written before the default changed (Blosc-LZ4) keep reading: the HDF5 filter is recorded in each chunk and
the codec's name in the store's metadata, and the reader registers every hdf5plugin filter.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from actrec.cli import cli
from actrec.data_manifests.manifest import ManifestRow
from actrec.pipeline.decode import ResizeSpec
from actrec.pipeline.flow import COMPRESSIONS, FlowOptions, FlowStore, compute_flow
from actrec.pipeline.frames import ExtractOptions, extract_frames
from actrec.pipeline.store import read_store_meta
from actrec.pipeline.tvl1 import TVL1Params

LIGHT = TVL1Params(nscales=2, warps=1, inner_iterations=10, outer_iterations=2)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory, videos_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("codecs") / "frames"
    rows = [ManifestRow("ucf", "ucf101_ApplyEyeMakeup_xvid.avi", 0, "c", "train")]
    extract_frames(rows, videos_dir, root, ExtractOptions(ResizeSpec(64, 48), fps=4.0), progress=False)
    return root


def test_every_codec_stores_the_same_codes_and_records_itself(frames: Path, tmp_path: Path) -> None:
    codes = {}
    for name in COMPRESSIONS:
        out = tmp_path / name
        compute_flow(frames, out, FlowOptions(params=LIGHT, backend="opencv", compression=name), progress=False)
        assert read_store_meta(out, "flow")["params"]["compression"] == name
        with FlowStore(out) as store:
            codes[name] = store.read_stack("ucf", 0, store.num_flows("ucf"))
    reference = codes.pop("none")
    assert reference.shape[0] > 10 and np.unique(reference).size > 20  # real motion, not a constant field
    assert all(np.array_equal(c, reference) for c in codes.values())


def test_the_default_codec_is_smaller_than_the_old_default_and_both_read(frames: Path, tmp_path: Path) -> None:
    sizes = {}
    for name in ("lz4", FlowOptions().compression):
        out = tmp_path / name
        compute_flow(frames, out, FlowOptions(params=LIGHT, backend="opencv", compression=name), progress=False)
        sizes[name] = sum(p.stat().st_size for p in out.glob("flow-*.h5"))
        (shard,) = out.glob("flow-*.h5")
        with h5py.File(shard, "r") as f:  # plain h5py (hdf5plugin registered on import by the store)
            assert f["videos/ucf/flow"].shape[0] > 10
    assert sizes[FlowOptions().compression] <= sizes["lz4"]


def test_a_rerun_without_compression_resumes_a_store_of_the_old_default(frames: Path, tmp_path: Path) -> None:
    """A store started with ``lz4`` (the earlier default) resumes under the CLI's default instead of stopping on a
    parameter mismatch; a new store gets ``zstd``."""
    old, new = tmp_path / "old", tmp_path / "new"
    compute_flow(frames, old, FlowOptions(params=LIGHT, backend="opencv", compression="lz4"), progress=False)
    light = ["--nscales", "2", "--warps", "1", "--inner-iterations", "10", "--outer-iterations", "2", "--quiet"]
    outputs = {}
    for out in (old, new):
        result = CliRunner().invoke(cli, ["compute-flow", "--frames", str(frames), "--out", str(out), *light])
        assert result.exit_code == 0, result.output
        outputs[out] = result.output
    assert "0 done, 1 skipped" in outputs[old]  # resumed: nothing redone
    assert "1 done, 0 skipped" in outputs[new]
    assert read_store_meta(old, "flow")["params"]["compression"] == "lz4"
    assert read_store_meta(new, "flow")["params"]["compression"] == "zstd"
