"""Makes this Python look like the GPU image we borrow: PyAV, hdf5plugin and opencv-contrib's ``cv2.optflow``
cannot be imported (the image has opencv-python-headless, without the contrib modules).

Python imports ``sitecustomize`` at start-up from the path, so putting this folder first on PYTHONPATH applies it to
a process and to every Python process it starts (pytest, the benchmarks, DataLoader and joblib workers):

    PYTHONPATH=benchmarks/gpu_image python3 -c "import av"     # ModuleNotFoundError

``benchmarks/device_check.sh --dry-run`` runs under it, and so does its CI test (tests/test_device_check.py).
"""

import importlib.abc
import sys

HIDDEN = ("av", "hdf5plugin", "cv2.optflow")


class _Hidden(importlib.abc.MetaPathFinder):
    """Finds the hidden modules (and their submodules) first, and refuses them."""

    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: the GPU image has none)", name=name)
        return None


sys.meta_path.insert(0, _Hidden())
try:  # OpenCV registers cv2.optflow itself while cv2 loads: load it now and take the module away again
    import cv2
except ImportError:
    pass
else:
    sys.modules.pop("cv2.optflow", None)
    for attr in [a for a in vars(cv2) if a == "optflow" or a.startswith("optflow_")]:
        delattr(cv2, attr)
