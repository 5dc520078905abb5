"""`--pretrained imagenet`: torchvision's weights downloaded once into the torch hub cache with their SHA-256
checked, served here by a local HTTP server on 127.0.0.1 from a generated state dict; offline, one line."""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from actrec.cli import cli
from actrec.errors import InputError
from actrec.models import pretrained
from actrec.models.pretrained import resolve_weights
from actrec.models.resnet import ResNet
from actrec.training.config import resolve_config
from actrec.training.trainer import train

sys.path.insert(0, str(Path(__file__).parent))  # tests/ is not a package: reach the shared helper module
import train_fixtures as fx  # noqa: E402
from train_fixtures import one_torch_thread  # noqa: E402,F401  (autouse fixture)


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL, paths requested) of an HTTP server on 127.0.0.1."""
    folder = tmp_path / "served"
    folder.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format: str, *args: object) -> None:  # one call per request
            requested.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_port}", requested
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache (TORCH_HOME), its checkpoints folder returned."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # as if torch.hub.set_dir was never called
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _publish(folder: Path, base: str, monkeypatch, *, wrong_hash: bool = False) -> tuple[str, dict]:
    """Serve a generated ImageNet-style state dict as resnet50-SHA256PREFIX.pth, named in the URL table."""
    state = partial(ResNet, (1, 1, 1, 1), width=8)(in_channels=3, num_classes=1000).state_dict()
    torch.save(state, folder / "weights.pth")
    prefix = "00000000" if wrong_hash else hashlib.sha256((folder / "weights.pth").read_bytes()).hexdigest()[:8]
    name = f"resnet50-{prefix}.pth"
    (folder / "weights.pth").rename(folder / name)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet50", f"{base}/{name}")
    return name, state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_imagenet_weights_are_downloaded_once_then_loaded_with_cross_modality_init(server, hub, monkeypatch,
                                                                                   tmp_path):
    folder, base, requested = server
    name, state = _publish(folder, base, monkeypatch)
    assert resolve_weights("imagenet", "resnet50", progress=False) == hub / name
    assert requested == [f"/{name}"] and torch.equal(torch.load(hub / name, weights_only=True)["conv1.weight"],
                                                     state["conv1.weight"])
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=2, test_per_class=0)
    lines = []
    config = resolve_config("stilt", overrides=fx.tiny_overrides(data, iterations=1, pretrained="imagenet"))
    train(config, tmp_path / "run", progress=False, log=lines.append)
    assert requested == [f"/{name}"]  # the cached file, not a second download
    assert f"spatial_backbone: {hub / name}: loaded" in lines[0]
    assert "cross-modality init: conv1.weight" in lines[1]
    assert resolve_weights(str(hub / name), "resnet50") == hub / name  # a path passes unchanged


def test_a_download_whose_sha256_differs_from_its_name_is_not_kept(server, hub, monkeypatch):
    folder, base, _ = server
    _publish(folder, base, monkeypatch, wrong_hash=True)
    with pytest.raises(InputError, match="SHA-256 does not match") as excinfo:
        resolve_weights("imagenet", "resnet50", progress=False)
    assert "\n" not in str(excinfo.value)
    assert list(hub.iterdir()) == []  # neither the file nor a partial download


def test_offline_the_error_says_what_to_download_and_to_pass_the_path(hub, monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/resnet50-0676ba61.pth"  # nothing listens: as without a network
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "resnet50", url)
    data = fx.learnable_dataset(tmp_path / "data", train_per_class=1, test_per_class=0)
    options = [f"--{key.replace('_', '-')}={value}" for key, value in fx.tiny_overrides(data).items()
               if key != "reduced"]
    result = CliRunner().invoke(cli, ["train", "stilt", "--out", str(tmp_path / "run"), "--reduced", "--quiet",
                                      *options, "--pretrained", "imagenet"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert f"could not download {url}" in line and "--pretrained PATH/resnet50-0676ba61.pth" in line


def test_cotnet_has_no_published_torchvision_weights():
    with pytest.raises(InputError, match="torchvision publishes no cotnet101 weights.*--pretrained PATH"):
        resolve_weights("imagenet", "cotnet101")
