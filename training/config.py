"""Training configuration: one frozen dataclass with the papers' defaults, JSON files and per-option overrides.

A run's configuration is built in three layers, each overriding the one before: the recipe (``recipe``: the paper's
for the model, or the from-scratch recipe for reduced models), an optional JSON file (``--config``; any subset of the
fields), and command-line options. The
result is validated and saved as ``config.json`` in the run folder and inside every checkpoint, so ``--resume`` and
``evaluate`` rebuild exactly the same model and data pipeline. Data paths are saved absolute and resolved
(``absolute_paths``), so a run folder works from any directory; runs saved before hold them as typed, and
``run_config`` looks those up from the current directory, as they always were.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from actrec.errors import InputError, OutputError
from actrec.pipeline.diskspace import is_disk_full

MODELS = ("stilt", "cotlstm")
AMP_MODES = ("auto", "off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
AUGMENT_PLACES = ("auto", "cpu", "gpu")  # where the batch augmentation runs; auto: on the GPU when training on one
BAD_SAMPLE_POLICIES = ("skip", "fail")
# The from-scratch recipe (``--reduced`` runs and the demo): the papers' SGD at lr 1e-3 is made for ImageNet-initialised
# backbones and hardly moves random weights in a short budget; AdamW with warmup and cosine decay does.
FROM_SCRATCH = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine", "warmup_iters": 20}
# Fields that may change when a run is resumed: they do not change what is computed, only how or how long.
RESUMABLE_FIELDS = ("iterations", "workers", "cache_mb", "checkpoint_every", "log_every", "augment_on",
                    "on_bad_sample", "bad_sample_budget")
CONFIG_FILE = "config.json"  # in the run folder, beside the checkpoints
# The data paths of a run, with what each names; saved absolute and resolved, so a run folder works from anywhere.
PATH_FIELDS = {"manifest": "manifest", "frames": "frame store", "flow": "flow store"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are STILT's recipe (section 4.2 of the paper) on UCF101."""

    model: str = "stilt"  # "stilt" or "cotlstm"
    # data
    frames: str = ""  # frame store folder
    flow: str = ""  # flow store folder (same videos, computed from the frame store)
    manifest: str = ""  # actrec manifest CSV: video ids, labels, splits
    split: str = "train"  # manifest split trained on
    segments: int = 3  # STILT: TSN segments per video (TSN's 3); CoT-LSTM: 1 (one RGB frame + t flows)
    flow_length: int = 10  # STILT: L flows per stack (2L channels); CoT-LSTM: t flow frames fed to the LSTM
    crop: int = 224  # network input size (both papers: 224)
    resize: int = 256  # CoT-LSTM: frames resized to resize x resize first (paper: 256); STILT test: short side
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)  # STILT: TSN multi-scale crop sizes (x short side)
    max_distort: int = 1  # STILT: crop width and height scales may differ by this many steps (aspect jitter)
    rotation: float = 15.0  # CoT-LSTM: maximum rotation in degrees (the paper gives no value)
    erase_prob: float = 0.5  # CoT-LSTM: random-erasing probability (Zhong et al.'s default)
    flip: bool = True  # random horizontal flips (both papers); off when a mirror image changes the class (left/right)
    # model
    reduced: bool = False  # CPU-sized backbones (one block per stage) for tests and demos
    width: int = 8  # stem width of the reduced backbones
    dropout: float = 0.5  # dropout before the classifiers (STILT: not stated; CoT-LSTM Table II: 0.5)
    co_attention: bool = True  # STILT: False averages the segments instead (the paper's "Two-stream" ablation)
    pretrained: str = ""  # ImageNet checkpoint loaded into both backbones (cross-modality init for flow)
    # optimisation (the papers' recipe; ``FROM_SCRATCH`` replaces some of it for reduced models)
    optimizer: str = "sgd"  # "sgd" (both papers) or "adamw"
    schedule: str = "step"  # "step": lr x lr_gamma every lr_step iterations (both papers); "cosine": to 0 at the end
    warmup_iters: int = 0  # linear lr warmup over the first iterations, before the schedule (the papers: none)
    iterations: int = 50_000  # STILT: 50k; CoT-LSTM: 500
    batch_size: int = 128  # global batch: per-process batch x processes x accumulate (STILT 128, CoT-LSTM 64)
    accumulate: int = 1  # gradient-accumulation micro-batches per iteration (big batches on small GPUs)
    lr: float = 1e-3  # both papers
    lr_step: int = 10_000  # multiply lr by lr_gamma every lr_step iterations (STILT: 10k, 5k for HMDB51; CoT-LSTM: 450)
    lr_gamma: float = 0.1  # both papers
    momentum: float = 0.9  # SGD momentum, both papers (AdamW ignores it)
    weight_decay: float = 5e-4  # STILT; the CoT-LSTM paper does not state one, the same value is used
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "off", "bf16", "fp16" (with a GradScaler)
    seed: int = 0  # model initialisation, data order and augmentation all derive from it
    # runtime (may change on --resume)
    workers: int = 4  # DataLoader worker processes per training process
    cache_mb: int = 0  # decoded videos kept in memory per loader process (small datasets, many epochs); 0: off
    augment_on: str = "auto"  # batch augmentation: "gpu" (the training GPU), "cpu" (the loader processes), "auto"
    on_bad_sample: str = "skip"  # a clip that cannot be read: "skip" it (listed, counted, within the budget) or "fail"
    bad_sample_budget: float = 0.001  # skipping more than this fraction of the clips seen (and over 10) is fatal
    checkpoint_every: int = 1000  # iterations between checkpoints (one also on SIGTERM/SIGINT and at the end)
    log_every: int = 10  # iterations between metrics.csv rows and progress updates

    def per_process_batch(self, world_size: int) -> int:
        """Clips per micro-batch in each of ``world_size`` processes."""
        return self.batch_size // (world_size * self.accumulate)


def paper_config(model: str, dataset: str = "ucf101") -> TrainConfig:
    """The published recipe: STILT section 4.2 (lr step 5k on HMDB51, else 10k) or CoT-LSTM's "Network Training"."""
    if model == "stilt":
        return TrainConfig(model="stilt", lr_step=5_000 if dataset == "hmdb51" else 10_000)
    if model == "cotlstm":
        return TrainConfig(model="cotlstm", segments=1, iterations=500, batch_size=64, lr_step=450)
    raise InputError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")


def recipe(model: str, dataset: str = "ucf101", reduced: bool = False) -> TrainConfig:
    """The starting point of a run: ``paper_config``, with the ``FROM_SCRATCH`` optimiser and schedule for a reduced
    model (trained from random weights on the CPU)."""
    config = paper_config(model, dataset)
    return replace(config, reduced=True, **FROM_SCRATCH) if reduced else config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able values (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}


def save_config(path: str | Path, config: TrainConfig) -> None:
    """Write ``config.json`` atomically; OutputError naming it when it cannot be written (no ``.tmp`` stays)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "disk full" if is_disk_full(exc) else exc.strerror or str(exc)
        raise OutputError(f"{path}: cannot be written ({reason}; {shutil.disk_usage(path.parent).free / 1e6:.1f} MB "
                          f"left in {path.parent})") from None


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its data paths and a ``pretrained`` file absolute and resolved (relative ones against the
    current directory), so that its run folder works from any directory and paths compare by what they name."""
    names = [name for name in PATH_FIELDS if getattr(config, name)]
    if config.pretrained and config.pretrained != "imagenet":
        names.append("pretrained")
    return replace(config, **{name: str(Path(getattr(config, name)).expanduser().resolve()) for name in names})


def run_config(values: Mapping[str, Any], checkpoint: str | Path,
               needed: Iterable[str] = tuple(PATH_FIELDS)) -> TrainConfig:
    """The config saved in a run's ``checkpoint`` with absolute data paths; InputError for a ``needed`` one that does
    not exist, saying that it came from the run's config.

    Runs saved before paths were stored absolute hold them as typed: they are taken from the current directory, as
    they always were, and the error says so."""
    config = apply_overrides(TrainConfig(), values, str(checkpoint))
    run_dir = Path(checkpoint).parent
    source = run_dir / CONFIG_FILE if (run_dir / CONFIG_FILE).is_file() else Path(checkpoint)
    for name in needed:
        path = Path(getattr(config, name))
        if str(path) and not path.exists():
            where = "" if path.is_absolute() else (f", relative to the directory the run was started in; looked up "
                                                   f"in the current one, {Path.cwd()}: run from that directory")
            raise InputError(f"{path}: {PATH_FIELDS[name]} not found (the path comes from the run's config, "
                             f"{source}{where})")
    return absolute_paths(config)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields set by a JSON config file (any subset of TrainConfig's fields)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config file must hold one JSON object, found {type(values).__name__}")
    return values


def apply_overrides(base: TrainConfig, values: Mapping[str, Any], source: str) -> TrainConfig:
    """``base`` with ``values`` replaced, each checked against the field's type; unknown keys raise InputError."""
    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise InputError(f"{source}: unknown config keys {unknown}; known keys: {', '.join(types)}")
    return replace(base, **{key: _coerce(key, value, types[key], source) for key, value in values.items()})


def _coerce(key: str, value: Any, kind: type, source: str) -> Any:
    """JSON value -> the field's Python type (int for float fields is fine, lists become tuples of floats)."""
    if kind is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise InputError(f"{source}: {key} must be a {kind.__name__}, found {value!r}")


def resolve_config(model: str, config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
                   dataset: str = "ucf101") -> TrainConfig:
    """``recipe`` for ``model`` <- JSON file <- overrides (None values are ignored), then validated. Whether the
    model is reduced (and so which recipe) is read from the file and the overrides first."""
    from_file = read_config_file(config_file) if config_file is not None else {}
    if from_file.get("model", model) != model:
        raise InputError(f"{config_file}: configures model {from_file['model']!r}, not {model!r}")
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    config = recipe(model, dataset, reduced=given.get("reduced", from_file.get("reduced", False)) is True)
    config = apply_overrides(config, from_file, str(config_file))
    config = absolute_paths(apply_overrides(config, given, "command line"))
    validate_config(config)
    return config


def validate_config(config: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError naming the first inconsistent value."""
    checks = [
        (bool(config.frames and config.flow and config.manifest),
         "frames, flow and manifest must be set (options --frames, --flow, --manifest or the config file)"),
        (config.model in MODELS, f"model must be one of {', '.join(MODELS)}"),
        (config.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}"),
        (config.augment_on in AUGMENT_PLACES, f"augment_on must be one of {', '.join(AUGMENT_PLACES)}"),
        (config.on_bad_sample in BAD_SAMPLE_POLICIES, f"on_bad_sample must be one of {', '.join(BAD_SAMPLE_POLICIES)}"),
        (0 <= config.bad_sample_budget < 1, "bad_sample_budget must be in [0, 1)"),
        (config.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
        (config.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
        (config.model != "cotlstm" or config.segments == 1, "CoT-LSTM takes one RGB frame per clip: segments=1"),
        (config.model != "cotlstm" or config.co_attention, "CoT-LSTM has no co-attention to switch off"),
        (min(config.segments, config.flow_length, config.crop, config.width, config.accumulate) >= 1,
         "segments, flow_length, crop, width and accumulate must be at least 1"),
        (config.model != "cotlstm" or config.width % 8 == 0, "CoT-LSTM's reduced width must be a multiple of 8"),
        (config.resize >= config.crop, f"resize ({config.resize}) must be at least crop ({config.crop})"),
        (bool(config.scales) and all(0 < s <= 1 for s in config.scales), "scales must lie in (0, 1]"),
        (config.max_distort >= 0 and 0 <= config.erase_prob <= 1 and 0 <= config.dropout < 1,
         "max_distort >= 0, erase_prob in [0, 1] and dropout in [0, 1) are required"),
        (config.iterations >= 1 and config.lr_step >= 1 and config.lr > 0, "iterations, lr_step, lr must be > 0"),
        (min(config.checkpoint_every, config.log_every) >= 1 and min(config.workers, config.cache_mb, config.seed,
                                                                       config.warmup_iters) >= 0,
         "checkpoint_every and log_every must be >= 1, workers, cache_mb, seed and warmup_iters >= 0"),
        (config.batch_size % (world_size * config.accumulate) == 0,
         f"batch_size {config.batch_size} must be a multiple of processes ({world_size}) x accumulate "
         f"({config.accumulate})"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"training config: {message}")


def config_warnings(config: TrainConfig) -> list[str]:
    """One line for each legal but probably unintended setting."""
    warnings = []
    if config.iterations <= config.warmup_iters:
        warnings.append(f"warning: --iterations {config.iterations} is not more than the {config.warmup_iters} warmup "
                        f"iterations: the whole run warms up (lr {config.lr * config.iterations / config.warmup_iters:.2g}"
                        f" of {config.lr:.2g} at the end) and the {config.schedule} schedule never starts; lower "
                        "--warmup-iters or raise --iterations")
    return warnings


def check_resume(saved: TrainConfig, wanted: TrainConfig, source: str) -> TrainConfig:
    """The saved config with the resumable fields of ``wanted``; any other difference raises InputError."""
    changed = [f.name for f in fields(TrainConfig)
               if f.name not in RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(wanted, f.name)]
    if changed:
        raise InputError(f"{source}: --resume continues the saved run, but these settings differ from it: "
                         f"{', '.join(changed)} (only {', '.join(RESUMABLE_FIELDS)} may change)")
    return replace(saved, **{name: getattr(wanted, name) for name in RESUMABLE_FIELDS})
