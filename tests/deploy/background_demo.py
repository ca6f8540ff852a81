"""The cluster demo of ``test_cluster_demo.py``, run in the background from the test session's start.

The demo takes 10-15 minutes, partly waiting on process starts and the scheduler's loop, so the
rest of the suite runs beside it and its tests run last (``tests/conftest.py``).  On 2 cores the
two still compete for the CPU (every Spark application unpacks the 1.3 GB environment on its
driver and each executor): this saved 2-5 minutes of a 22-25 minute suite, not the demo's whole
time.  It is a subprocess, as ``make cluster-demo`` runs it; a session that ends first (a failure
with ``-x``, Ctrl-C) stops it, and the demo stops every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = "tests/deploy/test_cluster_demo.py"
BACKFILL_TOP_K = 3
TIMEOUT_S = 1800


@dataclass
class BackgroundDemo:
    out: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    started: float

    def wait(self) -> tuple[int, str]:
        """(exit status, output); a demo still running after TIMEOUT_S is stopped and fails."""
        try:
            code = self.process.wait(max(1.0, self.started + TIMEOUT_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            code = -1
        return code, self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM to its process group (the demo stops its daemons), SIGKILL a minute later."""
        for sig, wait_s in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):  # it may end between the poll and the signal
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue


def start_demo(folder: Path) -> BackgroundDemo:
    """``lime-rank cluster-demo`` on tiny data into ``folder/demo``; its output goes to ``folder/demo.log``."""
    out, log_path = folder / "demo", folder / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "LIME_RANK_"))}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "cluster-demo", "--out", str(out), "--users", "150", "--items", "80",
             "--days", "4", "--backfill-conf", json.dumps({"top_k": BACKFILL_TOP_K}), "--kill-worker-in-backfill"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    return BackgroundDemo(out, log_path, process, time.monotonic())
