"""Daemons started for a local deployment, and stopped again whatever happens.

Every process is started in its own session (its own process group), with its output in
a log file, so that stopping it also stops what it started (spark-class's JVM, the
scheduler's LocalExecutor workers, the api-server's uvicorn workers).  ``stop_all`` sends
SIGTERM to each group, waits, then SIGKILLs what is left: used from ``finally`` blocks
and on SIGINT/SIGTERM (:func:`signals_raise`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from pipelines.errors import DeploymentError, HttpStatusError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class Daemons:
    """The processes one deployment started, in start order."""

    log_dir: Path
    started: list[Daemon] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Daemon:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        daemon = Daemon(name, list(argv), log_path, process)
        self.started.append(daemon)
        log.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return daemon

    def check_alive(self) -> None:
        """Raise naming the first daemon that exited, with the end of its log."""
        for daemon in self.started:
            if not daemon.alive():
                raise DeploymentError(f"{daemon.name} (pid {daemon.pid}) exited with {daemon.process.returncode}; "
                                      f"end of {daemon.log_path}:\n{daemon.log_tail()}")

    def stop(self, daemon: Daemon, timeout_s: float = 20.0) -> None:
        _stop_group(daemon, timeout_s)
        if daemon in self.started:
            self.started.remove(daemon)

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """Stop every daemon, the last started first; never raises for one that is already gone."""
        for daemon in reversed(list(self.started)):
            _stop_group(daemon, timeout_s)
        self.started.clear()


def _stop_group(daemon: Daemon, timeout_s: float) -> None:
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(daemon.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(daemon.pid):
            daemon.process.poll()
            time.sleep(0.2)
        if not _group_alive(daemon.pid):
            break
    daemon.process.poll()
    log.info("stopped %s (pid %d)", daemon.name, daemon.pid)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, daemons: Daemons | None = None,
             interval_s: float = 1.0) -> T:
    """Poll ``probe`` until it returns something other than None; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if daemons is not None:
            daemons.check_alive()
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def http_json(url: str, method: str = "GET", body: Any = None, headers: Mapping[str, str] | None = None,
              timeout_s: float = 30.0) -> Any:
    """One JSON request to 127.0.0.1; an HTTP error status raises with the response body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise HttpStatusError(f"{method} {url} -> HTTP {exc.code}: {exc.read().decode(errors='replace')[:2000]}",
                              exc.code) from None
    return json.loads(payload) if payload else None


def try_http_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    """Like :func:`http_json` (GET) but None while the server does not answer yet."""
    try:
        return http_json(url, headers=headers, timeout_s=5.0)
    except (OSError, DeploymentError):
        return None


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGTERM (and SIGHUP) into KeyboardInterrupt meanwhile, so ``finally`` blocks stop the daemons."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
