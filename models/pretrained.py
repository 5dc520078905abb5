"""Load ImageNet checkpoints (torchvision ResNet, JDAI-CV/CoTNet) into our backbones, with a report.

`--pretrained imagenet` names torchvision's published ImageNet-1k weights of a ResNet (`IMAGENET_URLS`, the
IMAGENET1K_V1 files, the classic recipe the papers' era used). They are downloaded once into the torch hub cache
(`torch.hub.get_dir()/checkpoints`, where torchvision keeps them too), with the SHA-256 prefix in the file name
checked, and read from there afterwards. Without a network the error says which file to fetch and to pass its path.
JDAI-CV publishes CoTNet-101's weights on Google Drive and Baidu only (links in their README), so CoT-LSTM takes
them as a path.

Accepted files: a bare state dict, or one wrapped as `{"state_dict": ...}` or `{"model": ...}`; `module.` prefixes
left by DistributedDataParallel are stripped. Files are always read with
`torch.load(path, map_location="cpu", weights_only=True)`, so no pickled code runs.

Key names. torchvision's ResNet names are ours. The CoTNet reference (timm's ResNet with its `CotLayer` as each
bottleneck's `conv2`) shares every name outside the CoT layers; inside `layerN.M.conv2.` its sub-modules are renamed
by the table in `cotnet_reference_keys.json`, and the indices inside them are unchanged because our sub-modules
are laid out like the reference's:

    key_embed.{0 conv, 1 BN}                   -> static_key.{0, 1}    (K1: grouped 3x3 conv, BN, ReLU)
    embed.{0 conv, 1 BN, 3 conv, 4 GroupNorm}  -> attention.{0, 1, 3, 4}
    conv1x1.{0 conv, 1 BN}                     -> value.{0, 1}
    bn                                         -> dynamic_norm         (BN before Swish, giving K2)
    se.{0 conv, 1 BN, 3 conv}                  -> fuse.{0, 1, 3}       (split attention over K2, K1)

e.g. `layer3.5.conv2.embed.4.weight` -> `layer3.5.conv2.attention.4.weight`. Names not in the table pass unchanged.

Shape mismatches: the classifier (`fc.*`) is skipped when its shape differs (1000 ImageNet classes vs 101) and
left at its initial values; a first convolution whose input channels differ gets the cross-modality
initialisation (TSN: the pretrained kernel averaged over its input channels, repeated for each model channel); any
other mismatch means the file is for another architecture and raises `InputError`.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from actrec.errors import InputError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model")  # checkpoint dicts that hold the state dict one level down
DDP_PREFIX = "module."
HEAD_PREFIX = "fc."  # the classifier, skipped on a shape mismatch
FIRST_CONV = "conv1.weight"  # the kernel that cross-modality initialisation adapts
TRAIN_CHECKPOINT_FORMAT = "actrec-train-checkpoint"  # the "format" entry of actrec's training checkpoints
SHOWN_KEYS = 8  # key names listed per category of a load report; the rest are counted
IMAGENET = "imagenet"  # the --pretrained value that names torchvision's published weights
IMAGENET_URLS = {  # torchvision ResNet{50,101}_Weights.IMAGENET1K_V1; the name ends in its SHA-256's first digits
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's convention: NAME-SHA256PREFIX.EXT
_COT_LAYER_KEY = re.compile(r"^(layer\d+\.\d+\.conv2\.)([A-Za-z0-9_]+)(\..+)$")


@dataclass(frozen=True)
class LoadReport:
    """What `load_pretrained` did with each key of the file and of the model."""

    path: Path
    loaded: tuple[str, ...]  # copied unchanged
    adapted: tuple[str, ...]  # first conv converted by cross-modality initialisation
    skipped: tuple[str, ...]  # classifier keys of another shape, left at their initial values
    missing: tuple[str, ...]  # model keys the file lacks, left at their initial values
    unexpected: tuple[str, ...]  # file keys the model has no place for, ignored

    def summary(self) -> str:
        """One line per non-empty category, naming its first ``SHOWN_KEYS`` keys and counting the rest."""
        lines = [f"{self.path}: loaded {len(self.loaded)} of the model's tensors"]
        for label, keys in (
            ("cross-modality init", self.adapted),
            ("skipped (shape differs)", self.skipped),
            ("missing from the file", self.missing),
            ("unexpected in the file", self.unexpected),
        ):
            if keys:
                more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
                lines.append(f"  {label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
        return "\n".join(lines)


def resolve_weights(pretrained: str, arch: str, *, progress: bool = True) -> Path:
    """The weights file that ``--pretrained`` names for a backbone ``arch``: ``imagenet`` gives torchvision's
    cached download (see the module docstring), anything else is a path, returned unchanged."""
    if pretrained != IMAGENET:
        return Path(pretrained)
    if arch not in IMAGENET_URLS:
        raise InputError(f"--pretrained imagenet: torchvision publishes no {arch} weights; download the reference "
                         f"ImageNet weights of {arch} (see the README) and pass the file: --pretrained PATH")
    return download_weights(IMAGENET_URLS[arch], Path(torch.hub.get_dir()) / "checkpoints", progress=progress)


def download_weights(url: str, folder: Path, *, progress: bool = True) -> Path:
    """``folder/NAME`` for the file at ``url`` (NAME-SHA256PREFIX.pth), downloaded when absent with its SHA-256
    checked; a failed or mismatching download leaves nothing behind and raises a one-line InputError."""
    name = url.rsplit("/", 1)[-1]
    path = folder / name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    prefix = _HASH_IN_NAME.search(name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix.group(1) if prefix else None,
                                       progress=progress)
    except urllib.error.URLError as exc:  # no network, proxy, HTTP error
        raise InputError(f"could not download {url} ({exc.reason}); fetch that file where there is a network and "
                         f"pass it: --pretrained PATH/{name}") from None
    except RuntimeError as exc:  # torch.hub: 'invalid hash value (expected ..., got ...)'
        raise InputError(f"{url}: the download's SHA-256 does not match the name ({exc}); nothing was kept, "
                         "try again or fetch the file yourself") from None
    return path


def load_torch_file(path: str | Path) -> object:
    """`torch.load(path, map_location="cpu", weights_only=True)`, with `InputError` naming the file when it is
    missing or cannot be unpickled (corrupt, truncated, not a PyTorch file, or holding non-tensor objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types (EOFError, IndexError, UnpicklingError...)
        code = _REFUSED_GLOBAL.search(str(exc))
        if code:
            raise InputError(f"{path}: the file asks to run code when loaded ({code.group(1)}) and was refused: "
                             "only tensors and plain values are read (weights_only); re-save the weights as a plain "
                             "state dict") from None
        raise InputError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated? "
                         f"{_load_failure(exc)})") from None


# torch's weights-only unpickler names the global (a function or class to import) that it refused to load
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+?)\.?(?:\s|$)")
# torch.load wraps the actual reason of a failed safe load in generic advice; these lines are that advice
_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _load_failure(exc: Exception) -> str:
    """The specific line of a torch.load error, without its generic advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if not line.startswith(_ADVICE)]
    return specific[0] if specific else type(exc).__name__


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat state dict: unwrapped, `module.` stripped, CoTNet names mapped."""
    loaded = load_torch_file(path)
    if isinstance(loaded, Mapping) and loaded.get("format") == TRAIN_CHECKPOINT_FORMAT:
        raise InputError(f"{path} is an actrec training checkpoint, not backbone weights; continue its run with "
                         "train --resume, or score it with evaluate --checkpoint")
    state = _unwrap(loaded)
    if not isinstance(state, Mapping):
        raise InputError(f"{path}: not a state dict (found a {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise InputError(f"{path}: not a state dict (entry {key!r} holds a {type(value).__name__})")
    return map_reference_keys({key.removeprefix(DDP_PREFIX): value for key, value in state.items()})


def _unwrap(loaded: object) -> object:
    """`{"state_dict": sd}` / `{"model": sd}` -> sd; anything else unchanged."""
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return loaded[key]
    return loaded


def _cot_layer_renames() -> dict[str, str]:
    """Reference CoT sub-module name -> ours, from the packaged table."""
    table = resources.files("actrec.models").joinpath("cotnet_reference_keys.json").read_text(encoding="utf-8")
    return json.loads(table)["cot_layer_modules"]


def map_reference_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename JDAI-CV/CoTNet CoT-layer keys to ours (see the module docstring); other keys pass unchanged."""
    renames = _cot_layer_renames()

    def rename(key: str) -> str:
        match = _COT_LAYER_KEY.match(key)
        if match is None or match.group(2) not in renames:
            return key
        return match.group(1) + renames[match.group(2)] + match.group(3)

    return {rename(key): value for key, value in state.items()}


def cross_modality_kernel(weight: Tensor, in_channels: int) -> Tensor:
    """TSN cross-modality initialisation: Tensor[O, C, k, k] -> Tensor[O, in_channels, k, k], every input
    channel equal to the mean of the pretrained kernel over its C (RGB) channels."""
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a pretrained checkpoint into `model` (a ResNet / CoTNet backbone) and report every key's fate.

    Missing and unexpected keys are logged and reported by name, never fatal; see the module docstring for
    the rules on shape mismatches. Raises `InputError` for an unreadable file, a file that is not a state dict,
    or weights of another architecture.
    """
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    selected: dict[str, Tensor] = {}
    adapted, skipped, unexpected, foreign = [], [], [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif value.shape == own[key].shape:
            selected[key] = value
        elif key == FIRST_CONV and _differs_only_in_input_channels(value, own[key]):
            selected[key] = cross_modality_kernel(value, own[key].shape[1])
            adapted.append(key)
        elif key.startswith(HEAD_PREFIX):
            skipped.append(key)
        else:
            foreign.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
    if foreign:
        raise InputError(f"{path}: weights of another architecture (file vs model shapes: {'; '.join(foreign[:3])})")
    model.load_state_dict(selected, strict=False)
    report = LoadReport(
        path=path,
        loaded=tuple(key for key in selected if key not in adapted),
        adapted=tuple(adapted),
        skipped=tuple(skipped),
        missing=tuple(key for key in own if key not in state),
        unexpected=tuple(unexpected),
    )
    log.log(logging.WARNING if report.missing or report.unexpected else logging.INFO, report.summary())
    return report


def _differs_only_in_input_channels(file_kernel: Tensor, model_kernel: Tensor) -> bool:
    """Same output channels and kernel size, different input channels (e.g. RGB kernel, 20-channel flow model)."""
    return file_kernel.ndim == 4 and file_kernel.shape[0] == model_kernel.shape[0] and (
        file_kernel.shape[2:] == model_kernel.shape[2:]
    )
