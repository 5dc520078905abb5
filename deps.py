"""Optional and heavy dependencies, imported where they are used.

A path that does not need PyAV, hdf5plugin or opencv-contrib runs without them (the GPU image we borrow has none
of the three), and ``actrec --help`` does not pay for torch. A dependency that is missing when a command does need
it raises :class:`MissingDependency`: one line naming the package, what needs it and the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from actrec.errors import ActrecError


class MissingDependency(ActrecError):
    """An optional package that this command needs is not installed."""

    exit_code = 2


def require(module: str, needed_for: str, package: str | None = None) -> ModuleType:
    """``import module``, or MissingDependency naming the pip ``package`` (default: the module's name) and
    ``needed_for`` (what the user asked for, e.g. ``"extract-frames (decoding videos)"``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = package or module.split(".")[0]
        raise MissingDependency(f"{needed_for} needs the package {package!r}, which is not installed here "
                                f"({exc}); install it with: pip install {package}") from None


class LazyModule:
    """A module imported at its first attribute access (through :func:`require`), so that importing the module
    that holds it costs nothing and a missing package fails there, at the point of use, with one line."""

    def __init__(self, module: str, needed_for: str, package: str | None = None) -> None:
        self._spec = (module, needed_for, package)
        self._module: ModuleType | None = None

    def __getattr__(self, name: str) -> Any:
        if name in ("_spec", "_module"):  # not set yet (an instance made without __init__): never recurse
            raise AttributeError(name)
        if self._module is None:
            self._module = require(*self._spec)
        return getattr(self._module, name)
