"""Checks of Triton kernels that run in a subprocess under ``TRITON_INTERPRET=1``.

The interpreter is chosen when Triton is imported, and the suite's own process imports it first without the
variable. So a test file holding such checks runs itself as a script with the variable set (its ``__main__`` part
calls :func:`main`), prints one JSON object as its last line, and its tests assert on the parts of that object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable


def run_interpreted(script: str, *args: str, timeout: int = 900) -> dict:
    """Run ``script`` with ``TRITON_INTERPRET=1`` and ``args``; the JSON object it printed last."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(checks: Callable[[], Any]) -> None:
    """The script side: refuse to run without the interpreter, one torch thread, print ``checks()`` as JSON."""
    import torch

    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    torch.set_num_threads(1)
    print(json.dumps(checks()))
