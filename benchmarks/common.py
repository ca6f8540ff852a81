"""Shared helpers for the benchmarks: timing, peak memory of a process tree, JSON results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - t0


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_rss_by_kind(root: int) -> dict[str, int]:
    """Resident memory of ``root`` and all its descendants (Linux /proc), summed per kind:
    ``jvm`` (java processes) and ``other`` (the driver's Python, the Spark Python workers)."""
    totals, stack, seen = {"jvm": 0, "other": 0}, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            kind = "jvm" if Path(f"/proc/{pid}/comm").read_text().strip() == "java" else "other"
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    totals[kind] += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack.extend(_children(pid))
    return totals


def tree_rss_bytes(root: int) -> int:
    """Resident memory of ``root`` and all its descendants (Linux /proc)."""
    return sum(tree_rss_by_kind(root).values())


def run_with_peak_memory(cmd: list[str], timeout: float, interval: float = 0.1,
                         peaks_by_kind: dict[str, int] | None = None) -> tuple[str, int, float]:
    """Run ``cmd``; return (stdout, peak RSS of its whole process tree in bytes, seconds).

    ``peaks_by_kind``, when given, receives the peak of each kind (``jvm``, ``other``) on its own.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    peak = 0
    done = threading.Event()
    by_kind = peaks_by_kind if peaks_by_kind is not None else {}

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            now = tree_rss_by_kind(proc.pid)
            peak = max(peak, sum(now.values()))
            for kind, rss in now.items():
                by_kind[kind] = max(by_kind.get(kind, 0), rss)
            time.sleep(interval)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-4000:]}")
    return out, peak, time.perf_counter() - t0


def read_results(name: str) -> dict[str, Any] | None:
    """The results file ``name`` under ``benchmarks/results/``, or None when there is none yet."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
