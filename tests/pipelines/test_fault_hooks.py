"""The fault-injection hooks themselves (pipelines/faults.py): inert unless asked, strict when asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import faults
from pipelines.errors import FaultInjectionError, FaultSpecError

REPO = Path(__file__).resolve().parents[2]


class FakeTask:
    """A TaskContext of partition 0, attempt 0 (what the kill-executor hook matches by default)."""

    @staticmethod
    def partitionId() -> int:
        return 0

    @staticmethod
    def attemptNumber() -> int:
        return 0


def watch_fault_actions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record, instead of doing, what the hooks do to processes; run them as if inside a task."""
    import pyspark

    actions: list[tuple[str, int]] = []
    monkeypatch.setattr(faults.os, "_exit", lambda code: actions.append(("exit", code)))
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: actions.append(("kill", pid)))
    monkeypatch.setattr(faults, "executor_jvm_pid", lambda: 4242)
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: FakeTask()))
    return actions


def test_unset_means_no_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    actions = watch_fault_actions(monkeypatch)
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    assert faults.active_faults() == []
    faults.commit_point("user_links")
    faults.task_point("infer_user_links")
    assert actions == []  # nothing killed, nothing exited
    # the same points do act once asked to: the assertion above watches real effects
    monkeypatch.setenv(faults.FAULT_ENV, "crash-before-commit:table=user_links; kill-executor:stage=infer_user_links")
    faults.commit_point("user_links")
    faults.task_point("infer_user_links")
    assert actions == [("exit", faults.CRASH_EXIT_CODE), ("kill", 4242), ("exit", faults.CRASH_EXIT_CODE)]


def test_faults_for_other_tables_and_stages_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    actions = watch_fault_actions(monkeypatch)
    monkeypatch.setenv(faults.FAULT_ENV, "crash-before-commit:table=recommendations; kill-executor:stage=score_topk; "
                                         "kill-executor:stage=infer_user_links:partition=1")
    faults.commit_point("user_links")
    faults.task_point("infer_user_links")
    assert actions == []


def test_specs_parse() -> None:
    got = faults.parse_faults("crash-before-commit:table=user_links; kill-executor:stage=infer_user_links:"
                              "partition=2:once=/tmp/m")
    assert got == [faults.Fault("crash-before-commit", {"table": "user_links"}),
                   faults.Fault("kill-executor", {"stage": "infer_user_links", "partition": "2", "once": "/tmp/m"})]


@pytest.mark.parametrize(("text", "match"), [
    ("explode:table=x", r"unknown fault 'explode'"),
    ("crash-before-commit", r"crash-before-commit takes \['table'\] \(required\)"),
    ("crash-before-commit:table", r"expected key=value, got 'table'"),
    ("pause-before-commit:table=x:until=/tmp/go:timeout=soon", r"timeout must be a non-negative integer, got 'soon'"),
    ("kill-executor:stage=infer_user_links:host=a", r"kill-executor takes \['stage'\] \(required\) and "
                                                    r"\['attempt', 'once', 'partition'\], got \['host', 'stage'\]"),
])
def test_malformed_specs_are_errors_not_silent_no_ops(monkeypatch: pytest.MonkeyPatch, text: str, match: str) -> None:
    monkeypatch.setenv(faults.FAULT_ENV, text)
    with pytest.raises(FaultSpecError, match=match):
        faults.commit_point("user_links")


def test_pause_times_out_with_its_own_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(faults.FAULT_ENV, f"pause-before-commit:table=t:until={tmp_path / 'go'}:timeout=0")
    faults.commit_point("other")  # another table: no pause
    assert not (tmp_path / "go.waiting").exists()
    with pytest.raises(FaultInjectionError, match=r"go did not appear within 0 s \(table 't'\)"):
        faults.commit_point("t")
    assert (tmp_path / "go.waiting").exists()


def test_no_executor_jvm_above_a_plain_process() -> None:
    """Under local[N] the worker's JVM is the driver: the hook must refuse rather than kill it."""
    with pytest.raises(FaultInjectionError, match=r"no CoarseGrainedExecutorBackend process above"):
        faults.executor_jvm_pid()
    with pytest.raises(FaultInjectionError, match=r"no org.apache.spark.deploy.worker.Worker process above"):
        faults.worker_jvm_pid()


def test_kill_worker_is_a_known_fault_with_the_kill_executor_parameters() -> None:
    [fault] = faults.parse_faults("kill-worker:stage=infer_user_links:partition=1:attempt=0:once=/tmp/m")
    assert (fault.kind, fault.params["partition"], fault.get("once", "")) == ("kill-worker", "1", "/tmp/m")
    with pytest.raises(faults.FaultSpecError, match="kill-worker takes"):
        faults.parse_faults("kill-worker:table=user_links")


def test_crash_before_commit_exits_137_before_touching_the_table(tmp_path: Path) -> None:
    code = ("import pyarrow as pa\n"
            "from pipelines.tables.delta_rs import DeltaRsStore\n"
            "from pipelines.tables.schemas import RUN_AUDIT\n"
            "from pipelines.tables.audit import AuditRecord\n"
            "from pipelines.tables.store import WriteRequest\n"
            f"store = DeltaRsStore(None, {str(tmp_path)!r})\n"
            "row = AuditRecord('job', '2024-01-01', 'r').to_arrow()\n"
            "store.write_arrow(row, WriteRequest(RUN_AUDIT, 'append', 'a'))\n")
    env = {**os.environ, faults.FAULT_ENV: "crash-before-commit:table=run_audit", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == faults.CRASH_EXIT_CODE, proc.stderr
    assert not (tmp_path / "run_audit" / "_delta_log").exists()  # no table was created
    assert list((tmp_path / "run_audit").rglob("*.parquet"))  # but its data file was written: an orphan
