"""Overfit check: every model, trained from scratch with the default recipe of reduced models, fits a tiny generated
training set (each stream on its own), and does not when the labels carry no information.

Each class of the tiny set has its own colour (only the RGB stream sees it) and its own motion direction (only the
flow stream sees it), so a broken frame or flow reader, label mapping, loss or optimiser keeps one or both streams
near chance, far below the 95% asked for. The shuffled-label control shows that the budget is too small to
memorise the videos: reaching 95% needs the labels to agree with the data. Flips are off: two classes move left and
right, which a mirror image swaps.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from actrec.data_manifests.manifest import read_manifest, write_manifest
from actrec.training.config import resolve_config
from actrec.training.evaluate import EvalOptions, evaluate
from actrec.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)

ITERATIONS = 50
MODELS = {"stilt": ("stilt", {}), "stilt-two-stream": ("stilt", {"co_attention": False}), "cotlstm": ("cotlstm", {})}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fx.TinyData:
    return fx.learnable_dataset(tmp_path_factory.mktemp("overfit"), classes=4, train_per_class=6, test_per_class=0)


def train_top1(data: fx.TinyData, model: str, run_dir: Path, **changes: object) -> dict[str, float]:
    """Train ``model`` with the reduced models' recipe (AdamW, warmup, cosine: no lr given) and return the
    training-split top-1 (%) of each stream and of the model's fusion, scored with the test protocol."""
    overrides = fx.tiny_overrides(data, model, iterations=ITERATIONS, batch_size=8, warmup_iters=5, flip=False,
                                  **changes)
    for recipe_field in ("lr", "lr_step"):
        overrides.pop(recipe_field)
    config = resolve_config(model, overrides=overrides)
    assert (config.optimizer, config.schedule, config.lr) == ("adamw", "cosine", 1e-3)
    train(config, run_dir, progress=False)
    result = evaluate(run_dir / "checkpoint.pt", run_dir / "train_scores.npz",
                      EvalOptions(split="train", positions=2, workers=0), progress=False, log=lambda line: None)
    return {row.name: row.top1 for row in result.rows}


@pytest.mark.parametrize("name", MODELS)
def test_each_stream_fits_the_training_set(data, tmp_path, name):
    model, changes = MODELS[name]
    top1 = train_top1(data, model, tmp_path / name, **changes)
    assert set(top1) == {"rgb", "flow", "model fused"}
    assert all(value >= 95.0 for value in top1.values()), top1


def test_shuffled_labels_are_not_fitted(data, tmp_path):
    rows = read_manifest(data.manifest)
    labels = np.random.default_rng(0).permutation([row.label for row in rows])
    shuffled = tmp_path / "shuffled.csv"
    write_manifest(shuffled, [replace(row, label=int(label), label_name=f"class_{label}")
                              for row, label in zip(rows, labels)])
    top1 = train_top1(fx.TinyData(data.frames, data.flow, shuffled, data.num_classes), "stilt", tmp_path / "run",
                      co_attention=False)
    assert max(top1.values()) < 80.0, top1
