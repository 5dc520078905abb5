"""Imports that match use: ``--help`` and the data commands start without torch; the GPU paths run without PyAV,
hdf5plugin or opencv-contrib; a missing optional package is one line naming it and what needed it.

Each check runs in a fresh interpreter (a subprocess), where ``sys.modules`` shows what a command really imported.
The GPU image is imitated by benchmarks/gpu_image/sitecustomize.py, which hides av, hdf5plugin and cv2.optflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GPU_IMAGE = REPO / "benchmarks" / "gpu_image"
HEAVY = ("torch", "matplotlib", "scipy", "joblib", "av", "hdf5plugin", "triton")

# Runs actrec commands in this interpreter, then prints which heavy modules they imported.
RUN_COMMANDS = """
import json, sys
from actrec.cli import cli
for argv in json.loads(sys.argv[1]):
    try:
        cli(argv, prog_name="actrec")
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
""".format(heavy=HEAVY)


def _python(code: str, *args: str, gpu_image: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ACTREC_TVL1_COMPILE="0")  # tiny solves: compiling would take longer than solving
    if gpu_image:
        env["PYTHONPATH"] = os.pathsep.join([str(GPU_IMAGE), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_help_and_the_data_commands_do_not_import_torch(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    for name in ("walk/a.mp4", "walk/b.mp4", "run/c.mp4"):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(b"")
    commands = [["--help"], ["--version"], *([name, "--help"] for name in (
        "make-manifest", "extract-frames", "compute-flow", "flow-pair", "train", "evaluate", "predict", "fit-fusion",
        "export-rawframes", "import-rawframes", "synth", "demo", "check-gpu")),
        ["make-manifest", "folder", "--video-root", str(videos), "-o", str(tmp_path / "m.csv")]]
    proc = _python(RUN_COMMANDS, json.dumps(commands))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "m.csv").read_text().count("\n") == 4  # the manifest was written: header and 3 videos


GPU_PATHS = """
import json, sys
from pathlib import Path
from click.testing import CliRunner
from actrec.cli import cli
from actrec.pipeline.flow import FlowOptions, FlowStore, compute_flow
from actrec.pipeline.tvl1 import TVL1Params
sys.path.insert(0, sys.argv[2])
import train_fixtures  # the model and training tests' stores
root = sys.argv[1]
data = train_fixtures.learnable_dataset(Path(root), classes=2, train_per_class=1, test_per_class=0, frames=4, size=24)
light = TVL1Params(nscales=1, warps=1, outer_iterations=1, inner_iterations=3)
found = {}
for codec in ("gzip", "none"):
    out = f"{root}/flow_{codec}"
    compute_flow(data.frames, out, FlowOptions(params=light, compression=codec), progress=False)
    with FlowStore(out) as store:
        found[codec] = store.read_stack("c0_v0", 0, 3).shape
(Path(root) / "clips" / "walk").mkdir(parents=True)
(Path(root) / "clips" / "walk" / "a.mp4").write_bytes(b"")  # extract-frames stops before reading it
runner = CliRunner()
for name, argv in {
        "zstd": ["compute-flow", "--frames", str(data.frames), "--out", f"{root}/flow_zstd", "--backend", "torch",
                 "--quiet"],
        "opencv": ["compute-flow", "--frames", str(data.frames), "--out", f"{root}/flow_cv", "--backend", "opencv",
                   "--compression", "gzip", "--quiet"],
        "extract": ["extract-frames", "--video-root", f"{root}/clips", "--out", f"{root}/frames2", "--quiet"]}.items():
    result = runner.invoke(cli, argv)
    found[name] = [result.exit_code, result.output]
try:
    FlowStore(f"{root}/flow_zstd_full")
except Exception as exc:
    found["read_zstd"] = [type(exc).__name__, str(exc)]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def gpu_image_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Under the GPU image's packages: gzip/none flow stores written and read, the fixtures, and the commands that
    do need a hidden package; a zstd store made beforehand with the full install, read there."""
    root = tmp_path_factory.mktemp("gpu_image")
    made = _python("""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import train_fixtures
from actrec.pipeline.flow import FlowOptions, compute_flow
from actrec.pipeline.tvl1 import TVL1Params
data = train_fixtures.learnable_dataset(Path(sys.argv[1]) / "full", classes=2, train_per_class=1, test_per_class=0,
                                        frames=4, size=24)
compute_flow(data.frames, Path(sys.argv[1]) / "flow_zstd_full", FlowOptions(
    params=TVL1Params(nscales=1, warps=1, outer_iterations=1, inner_iterations=3)), progress=False)
""", str(root), str(REPO / "tests"))
    assert made.returncode == 0, made.stderr[-3000:]
    proc = _python(GPU_PATHS, str(root), str(REPO / "tests"), gpu_image=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_flow_stores_of_hdf5s_own_codecs_need_no_hdf5plugin(gpu_image_run: dict) -> None:
    assert gpu_image_run["gzip"] == gpu_image_run["none"] == [3, 24, 24, 2]


@pytest.mark.parametrize("name, package, what", [
    ("zstd", "hdf5plugin", "compute-flow with the zstd codec (gzip and none need no plugin)"),
    ("opencv", "opencv-contrib-python", "the opencv TV-L1 backend (--backend opencv)"),
    ("extract", "av", "extract-frames (decoding videos)")])
def test_a_command_that_needs_a_missing_package_names_it_in_one_line(gpu_image_run: dict, name: str, package: str,
                                                                     what: str) -> None:
    code, output = gpu_image_run[name]
    assert code == 2
    (line,) = output.splitlines()
    assert line.startswith(f"error: {what} needs the package {package!r}, which is not installed here")
    assert line.endswith(f"install it with: pip install {package}")


def test_reading_a_store_of_a_plugin_codec_names_hdf5plugin(gpu_image_run: dict) -> None:
    kind, message = gpu_image_run["read_zstd"]
    assert kind == "MissingDependency"
    assert message.startswith("reading the flow store ") and "with the zstd codec" in message
    assert "needs the package 'hdf5plugin'" in message
