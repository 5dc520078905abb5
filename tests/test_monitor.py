"""What a run leaves to look at: TensorBoard events (read back with TensorBoard's own reader) and loss.png."""

from __future__ import annotations

import csv
import shutil
import sys
import threading
import time
from pathlib import Path

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from actrec.errors import OutputError
from actrec.training.config import resolve_config
from actrec.training.evaluate import EvalOptions, evaluate
from actrec.training.monitor import LOSS_PLOT, TENSORBOARD, MetricsRow, RunMonitor, wait_past_newest_event_file
from actrec.training.trainer import resume_config, train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fx.learnable_dataset(tmp_path_factory.mktemp("monitor"), train_per_class=2, test_per_class=1)


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / TENSORBOARD))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something is drawn, not a blank canvas


def test_tensorboard_holds_the_metrics_rows_and_the_evaluation(data, tmp_path):
    run = tmp_path / "run"
    train(resolve_config("stilt", overrides=fx.tiny_overrides(data, iterations=4, log_every=2)), run,
          progress=False)
    rows = _metrics(run)
    scalars = _scalars(run)
    for name in ("loss", "lr", "clips_per_s", "data_wait"):
        logged = scalars[f"train/{name}"]
        assert [step for step, _ in logged] == [2, 4]
        expected = [float(r[name]) for r in rows]  # the CSV rounds clips_per_s to 0.01, data_wait to 0.001
        assert [value for _, value in logged] == pytest.approx(expected, rel=1e-4, abs=5e-3)
    _assert_png(run / LOSS_PLOT)
    evaluate(run / "checkpoint.pt", tmp_path / "test.npz", EvalOptions(positions=2, ten_crop=False, workers=0),
             progress=False, log=lambda line: None)
    scalars = _scalars(run)
    for name in ("rgb", "flow", "model_fused"):
        for metric in ("top1", "top5", "mean_class"):
            [(step, value)] = scalars[f"eval/test/{name}/{metric}"]
            assert step == 4 and 0 <= value <= 100
    assert scalars["eval/test/rgb/top5"] == [(4, 100.0)]  # 3 classes


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(data, tmp_path):
    overrides = fx.tiny_overrides(data, iterations=2)
    run = tmp_path / "run"
    train(resolve_config("stilt", overrides=overrides), run, progress=False)
    at_2 = tmp_path / "at_2"
    at_2.mkdir()
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):
        shutil.copy(run / name, at_2 / name)
    train(resume_config(run, {"iterations": 4}), run, resume=True, progress=False)
    for name in ("checkpoint.pt", "checkpoint.pt.sha256"):  # a crash after iteration 4, before its checkpoint
        shutil.copy(at_2 / name, run / name)
    train(resume_config(run, {"iterations": 3}), run, resume=True, progress=False)
    assert [int(r["iteration"]) for r in _metrics(run)] == [1, 2, 3]
    loss = _scalars(run)["train/loss"]
    assert [step for step, _ in loss] == [1, 2, 3]
    assert [value for _, value in loss] == pytest.approx([float(r["loss"]) for r in _metrics(run)], rel=1e-4)
    _assert_png(run / LOSS_PLOT)


def test_without_tensorboard_the_run_keeps_its_csv_and_plot(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when it is not installed
    run = tmp_path / "run"
    train(resolve_config("cotlstm", overrides=fx.tiny_overrides(data, "cotlstm", iterations=2)), run, progress=False)
    assert not (run / TENSORBOARD).exists()
    assert len(_metrics(run)) == 2
    _assert_png(run / LOSS_PLOT)


def test_a_new_event_file_never_shares_its_second_with_the_newest_one(tmp_path):
    """TensorBoard orders a folder's event files by name (creation second first, then a per-process counter
    compared as text): a writer is only created once the second of the newest file has passed."""
    (tmp_path / "events.out.tfevents.0000000100.host.7.9").touch()
    now = [100.2]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds

    wait_past_newest_event_file(tmp_path, clock=lambda: now[0], sleep=sleep)
    assert int(now[0]) == 101 and len(waits) > 0
    waits.clear()
    wait_past_newest_event_file(tmp_path, clock=lambda: now[0], sleep=sleep)  # already a later second
    assert waits == []
    wait_past_newest_event_file(tmp_path / "absent", clock=lambda: now[0], sleep=sleep)
    assert waits == []


def test_a_failed_event_write_is_reported_once_in_one_line_without_the_threads_traceback(tmp_path, monkeypatch):
    """TensorBoard writes events from a thread; when the run folder goes away its failure is raised by the next
    log, as one line, instead of a traceback printed from the thread (Python's threading.excepthook)."""
    printed = []

    def print_hook(args: threading.ExceptHookArgs) -> None:
        printed.append(args.exc_type)

    monkeypatch.setattr(threading, "excepthook", print_hook)
    run = tmp_path / "run"
    run.mkdir()
    monitor = RunMonitor(run, 0)
    monitor.log(MetricsRow(1, 1.0, 0.1, 1.0, 0.0, 1.0))
    time.sleep(0.5)  # the first events are written
    run.rename(tmp_path / "moved")
    monitor.writer.add_scalar("queued", 1.0, 2)  # queued after the folder went away: the writer thread fails on it
    thread = monitor.writer.file_writer.event_writer._async_writer._worker
    thread.join(timeout=30)
    assert isinstance(thread.exception, FileNotFoundError)
    with pytest.raises(OutputError, match=rf"^{run / 'metrics.csv'}: cannot write the metrics of iteration 2 "):
        monitor.log(MetricsRow(2, 1.0, 0.1, 1.0, 0.0, 2.0))
    monitor.abandon()
    assert printed == [] and threading.excepthook is print_hook  # restored
