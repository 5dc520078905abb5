"""Shared by the crash-safety tests: kill a stage command with SIGKILL at random moments, then let it finish."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable


def kill_then_finish(cmd: list[str], out: Path, *, kills: int, seed: int, wait: tuple[float, float],
                     after_kill: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Start ``cmd --out OUT`` and SIGKILL its whole process group ``kills`` times after a random wait (calling
    ``after_kill`` each time), then run it to completion and return that last run."""
    rng = random.Random(seed)
    for _ in range(kills):
        proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        time.sleep(rng.uniform(*wait))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if after_kill is not None:
            after_kill()
    return subprocess.run(cmd + ["--out", str(out)], capture_output=True, text=True)
