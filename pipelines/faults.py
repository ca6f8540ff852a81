"""Fault injection for the reliability tests: a no-op unless ``$LIME_RANK_FAULT`` is set.

A nightly job is judged on the night it goes wrong, so the tests kill executors and
drivers at the worst moments and check that no half-written, duplicated or silently
wrong table becomes visible.  The faults are injected at two named points of the
product, and only when the environment variable names them:

``kill-executor:stage=<stage>[:partition=<p>][:attempt=<a>][:once=<marker file>]``
    Inside the Python worker of a matching task attempt of ``<stage>`` (only
    ``infer_user_links`` has this point), after it handed its first output batch to
    Spark: SIGKILL the executor JVM that runs the worker (the nearest parent
    process running ``CoarseGrainedExecutorBackend``).  Spark sees a lost executor
    and re-runs the task elsewhere.  ``partition`` and ``attempt`` default to 0;
    with ``once`` the fault fires only for the attempt that creates the marker file
    (a resubmitted stage starts its attempt numbers at 0 again).  Refused under a
    ``local[N]`` master, where the worker's JVM is the driver.
``kill-worker:stage=<stage>[:partition=<p>][:attempt=<a>][:once=<marker file>]``
    The same point and parameters as ``kill-executor``; SIGKILL the standalone Worker
    daemon above the executor as well (the nearest parent running
    ``org.apache.spark.deploy.worker.Worker``), as when a node dies.  The master loses
    the worker, the driver its executor, and the task is re-run on another node.  A
    marker file created beforehand disarms a ``once`` fault (the cluster test arms it for
    one DAG run by deleting the marker).
``crash-before-commit:table=<table>``
    On the driver, right before the Delta commit of ``<table>`` (its data files are
    written): ``os._exit(137)``, as if the driver were OOM-killed.
``pause-before-commit:table=<table>:until=<file>[:timeout=<seconds>]``
    On the driver, right before the Delta commit of ``<table>``: create
    ``<file>.waiting``, then wait until ``<file>`` exists (default timeout 120 s, then
    :class:`FaultInjectionError`), then go on with the commit.

Several faults may be given, separated by ``;``.  A malformed value is a
:class:`FaultSpecError` at the first fault point, never a silent no-op.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import FaultInjectionError, FaultSpecError

log = logging.getLogger(__name__)

FAULT_ENV = "LIME_RANK_FAULT"
KINDS: dict[str, tuple[set[str], set[str]]] = {  # kind -> (required keys, optional keys)
    "kill-executor": ({"stage"}, {"partition", "attempt", "once"}),
    "kill-worker": ({"stage"}, {"partition", "attempt", "once"}),
    "crash-before-commit": ({"table"}, set()),
    "pause-before-commit": ({"table", "until"}, {"timeout"}),
}
CRASH_EXIT_CODE = 137  # what a SIGKILLed process reports (128 + 9)
_EXECUTOR_MAIN = "CoarseGrainedExecutorBackend"
_WORKER_MAIN = "org.apache.spark.deploy.worker.Worker"
TASK_FAULTS = ("kill-executor", "kill-worker")


@dataclass(frozen=True)
class Fault:
    kind: str
    params: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str) -> str:
        return self.params.get(key, default)


def parse_faults(text: str) -> list[Fault]:
    """``kind:key=value:...`` items separated by ``;`` (see the module docstring)."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, *pairs = item.split(":")
        if kind not in KINDS:
            raise FaultSpecError(f"{FAULT_ENV}: unknown fault {kind!r} in {item!r}; known: {sorted(KINDS)}")
        params: dict[str, str] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key or not value:
                raise FaultSpecError(f"{FAULT_ENV}: expected key=value, got {pair!r} in {item!r}")
            params[key] = value
        required, optional = KINDS[kind]
        if required - set(params) or set(params) - required - optional:
            raise FaultSpecError(
                f"{FAULT_ENV}: {kind} takes {sorted(required)} (required) and {sorted(optional)}, "
                f"got {sorted(params)}"
            )
        for key in ("partition", "attempt", "timeout"):
            if key in params and not params[key].isdigit():
                raise FaultSpecError(f"{FAULT_ENV}: {key} must be a non-negative integer, got {params[key]!r}")
        faults.append(Fault(kind, params))
    return faults


def active_faults() -> list[Fault]:
    text = os.environ.get(FAULT_ENV, "")
    return parse_faults(text) if text else []


def _claim(marker: str) -> bool:
    """True for the one caller that creates ``marker`` (atomic across processes)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _proc_parent_and_cmdline(pid: int) -> tuple[int, str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command may hold spaces and parentheses
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ppid, cmdline


def _ancestor_running(main_class: str, start: int | None, why_absent: str) -> int:
    """The pid of the nearest process above ``start`` (default: this one) whose command line names
    ``main_class`` (Linux ``/proc``); a :class:`FaultInjectionError` saying ``why_absent`` if none."""
    pid = os.getpid() if start is None else start
    while pid > 1:
        ppid, cmdline = _proc_parent_and_cmdline(pid)
        if main_class in cmdline:
            return pid
        pid = ppid
    raise FaultInjectionError(f"no {main_class} process above this Python worker ({why_absent})")


def executor_jvm_pid(start: int | None = None) -> int:
    """The pid of the executor JVM above this process."""
    return _ancestor_running(_EXECUTOR_MAIN, start, "kill-executor: under local[N] the worker's JVM is the "
                                                    "driver; use a local-cluster[...] or cluster master")


def worker_jvm_pid(start: int | None = None) -> int:
    """The pid of the standalone Worker daemon above this process."""
    return _ancestor_running(_WORKER_MAIN, start, "kill-worker: only a standalone cluster's executors run "
                                                  "under a Worker daemon")


def task_point(stage: str) -> None:
    """Called by Spark tasks of ``stage`` (inside the Python worker) between output batches."""
    faults = [f for f in active_faults() if f.kind in TASK_FAULTS and f.params["stage"] == stage]
    if not faults:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return
    for fault in faults:
        if ctx.partitionId() != int(fault.get("partition", "0")) or ctx.attemptNumber() != int(
                fault.get("attempt", "0")):
            continue
        marker = fault.params.get("once")
        if marker is not None and not _claim(marker):
            continue
        victims = [executor_jvm_pid()]
        if fault.kind == "kill-worker":
            victims.insert(0, worker_jvm_pid(victims[0]))
        log.warning("fault injected: %s: SIGKILL %s during %s partition %d attempt %d", fault.kind, victims,
                    stage, ctx.partitionId(), ctx.attemptNumber())
        for handler in logging.getLogger().handlers:
            handler.flush()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        os._exit(CRASH_EXIT_CODE)  # the worker goes down with its executor, leaving no process behind


def commit_point(table: str) -> None:
    """Called by the driver right before the Delta commit of ``table`` (data files already written)."""
    for fault in active_faults():
        if fault.params.get("table") != table:
            continue
        if fault.kind == "crash-before-commit":
            log.warning("fault injected: driver exits with %d before committing %s", CRASH_EXIT_CODE, table)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(CRASH_EXIT_CODE)
        if fault.kind == "pause-before-commit":
            until = Path(fault.params["until"])
            timeout = int(fault.get("timeout", "120"))
            Path(f"{until}.waiting").touch()
            log.warning("fault injected: commit of %s paused until %s exists", table, until)
            deadline = time.monotonic() + timeout
            while not until.exists():
                if time.monotonic() > deadline:
                    raise FaultInjectionError(
                        f"pause-before-commit: {until} did not appear within {timeout} s (table {table!r})")
                time.sleep(0.05)
            log.warning("fault injected: commit of %s resumes", table)
