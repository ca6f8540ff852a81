"""The DAGs parse cleanly, declare what the docs say, and validate their Params (no Spark here)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

DAG_IDS = {"lime_nightly_scoring", "lime_candidate_refresh"}
NIGHTLY = "lime_nightly_scoring"


def _serialized(dag: Any) -> Any:
    """The DAG as the scheduler and ``airflow dags test`` see it (validates conf on run creation)."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def documented_edges(doc: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Tasks and edges of the code block after ``Task graph:`` (``a >> b >> c`` chains)."""
    match = re.search(r"Task graph:\s*```\n(.*?)```", doc, re.S)
    assert match, "the DAG docs must state the task graph"
    nodes: set[str] = set()
    edges: set[tuple[str, str]] = set()
    for line in match.group(1).strip().splitlines():
        chain = [name.strip() for name in line.split(">>")]
        nodes.update(chain)
        edges.update(itertools.pairwise(chain))
    return nodes, edges


def test_dagbag_has_no_import_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == DAG_IDS  # the helper module is not parsed as a DAG file


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_dag_has_tags_docs_and_retries_of_at_least_two(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert "lime-rank" in dag.tags
    assert dag.doc_md and dag.doc_md.strip().startswith("### LIME Rank")
    assert (dag.catchup, dag.max_active_runs) == (False, 1)
    for task in dag.tasks:
        assert task.retries >= 2, f"{dag_id}.{task.task_id} has retries={task.retries}"
        assert task.retry_delay >= dt.timedelta(minutes=1)


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_a_historical_ds_runs_every_task(dagbag: Any, dag_id: str) -> None:
    # regression: with start_date 2024-01-01, `dags test ... 1998-04-22` (MovieLens) ran no task and succeeded.
    # A missing start date is a failure too, not a pass: the DAG must state an early one and every task
    # must carry it (Airflow copies the DAG's; a task's own later date would skip that task).
    first_movielens_day = dt.datetime(1997, 9, 20, tzinfo=dt.UTC)
    dag = dagbag.dags[dag_id]
    assert dag.start_date is not None and dag.start_date <= first_movielens_day
    late = {t.task_id: t.start_date for t in dag.tasks if t.start_date is None or t.start_date > first_movielens_day}
    assert late == {}, f"tasks without a start date on or before {first_movielens_day:%Y-%m-%d}: {late}"


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_task_graph_is_the_documented_one(dagbag: Any, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    nodes, edges = documented_edges(dag.doc_md)
    assert set(dag.task_dict) == nodes
    actual = {(up, task_id) for task_id, task in dag.task_dict.items() for up in task.upstream_task_ids}
    assert actual == edges


def test_documented_graph_parser_reads_chains() -> None:
    doc = "Task graph:\n\n```\na >> b >> c\nd >> c\n```\n"
    assert documented_edges(doc) == ({"a", "b", "c", "d"}, {("a", "b"), ("b", "c"), ("d", "c")})


def test_retries_can_be_lowered_for_local_runs(dagbag_with_env: Any) -> None:
    bag = dagbag_with_env(LIME_RANK_DAG_RETRIES="0", LIME_RANK_DAG_RETRY_DELAY_S="1")
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        assert {(t.retries, t.retry_delay) for t in dag.tasks} == {(0, dt.timedelta(seconds=1))}


def test_spark_conf_comes_from_the_environment(dagbag_with_env: Any) -> None:
    bag = dagbag_with_env(LIME_RANK_SPARK_CONF='{"spark.sql.shuffle.partitions": 4}')
    for dag in bag.dags.values():
        for task in dag.tasks:
            assert task.conf == {"spark.log.level": "WARN", "spark.sql.shuffle.partitions": "4"}


def test_a_bad_retries_setting_is_an_import_error_naming_it(dagbag_with_env: Any) -> None:
    bag = dagbag_with_env(LIME_RANK_DAG_RETRIES="two")
    assert len(bag.import_errors) == 2
    message = "$LIME_RANK_DAG_RETRIES must be an integer >= 0, got 'two'"
    assert all(message in e for e in bag.import_errors.values())


def test_dag_files_import_neither_torch_nor_pyspark_and_open_no_file(tmp_path: Path) -> None:
    """Parse the DAG folder in a fresh interpreter, recording every file opened meanwhile."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from airflow.dag_processing.dagbag import BundleDagBag
        import airflow.providers.apache.spark.operators.spark_submit  # provider code may read its own files
        opened = []
        def hook(event, args):
            if event == "open" and isinstance(args[0], str):
                opened.append(args[0])
        sys.addaudithook(hook)
        bag = BundleDagBag(dag_folder={str(DAGS)!r}, bundle_path=Path({str(DAGS)!r}))
        assert not bag.import_errors, bag.import_errors
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pyspark"))
        dags = Path({str(DAGS)!r})
        foreign = [p for p in opened if not p.endswith((".py", ".pyc")) and Path(p).parent != dags]
        print("HEAVY", heavy)
        print("FOREIGN", foreign)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LIME_RANK_LAKEHOUSE": str(tmp_path / "missing")})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout
    assert "FOREIGN []" in out.stdout
    assert not (tmp_path / "missing").exists()


def test_params_defaults_come_from_the_environment_at_parse_time(
    dagbag_with_env: Any, tmp_path: Path,
) -> None:
    bag = dagbag_with_env(LIME_RANK_LAKEHOUSE=str(tmp_path / "lake"), LIME_RANK_CHECKPOINT="file:///models/m.pt")
    params = _serialized(bag.dags[NIGHTLY]).params.deep_merge({}).validate()
    assert (params["lakehouse"], params["checkpoint"]) == (str(tmp_path / "lake"), "file:///models/m.pt")
    assert bag.dags[NIGHTLY].task_dict["validate_publish"].outlets[0].uri == f"file://{tmp_path}/lake/recommendations"


@pytest.mark.parametrize("conf", [
    {"top_k": 0}, {"top_k": "ten"}, {"top_k": 1001}, {"max_history": 0}, {"exclude_seen": "yes"},
    {"candidate_mode": "fast"}, {"lakehouse": ""}, {"full_run": "yes"},
])
def test_invalid_conf_is_rejected_by_param_validation(dagbag: Any, conf: dict[str, Any]) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {next(iter(conf))}"):
        _serialized(dagbag.dags[NIGHTLY]).params.deep_merge(conf).validate()


def _render(dag: Any, task_id: str, conf: dict[str, Any], logical_date: dt.datetime | None) -> list[str]:
    params = _serialized(dag).params.deep_merge(conf).validate()
    task = copy.deepcopy(dag.task_dict[task_id])
    run = SimpleNamespace(logical_date=logical_date, run_after=dt.datetime(2024, 3, 9, 7, tzinfo=dt.UTC))
    task.render_template_fields({"params": params, "run_id": "manual__1", "dag_run": run},
                                jinja_env=dag.get_template_env())
    return list(task.application_args)


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_conf_override_changes_k_and_flags_of_scoring_and_gate(dagbag: Any) -> None:
    dag = dagbag.dags[NIGHTLY]
    when = dt.datetime(2024, 1, 5, 2, tzinfo=dt.UTC)
    for task_id in ("score_topk", "validate_publish"):
        default = _render(dag, task_id, {}, when)
        override = _render(dag, task_id, {"top_k": 3, "exclude_seen": False, "user_candidates": True}, when)
        assert (_flag(default, "--top-k"), _flag(override, "--top-k")) == ("10", "3")
        for flag in ("--include-seen", "--user-candidates"):
            assert flag not in default and flag in override
        assert _flag(default, "--ds") == "2024-01-05" and _flag(default, "--run-id") == "manual__1"
    args = _render(dag, "score_topk", {"candidate_mode": "sharded", "checkpoint": "/m.pt"}, when)
    assert (_flag(args, "--candidate-mode"), _flag(args, "--checkpoint")) == ("sharded", "/m.pt")
    assert _flag(_render(dag, "extract_histories", {"max_history": 50}, when), "--max-history") == "50"


def test_nightly_runs_incrementally_unless_the_full_run_param_is_set(dagbag: Any) -> None:
    dag = dagbag.dags[NIGHTLY]
    when = dt.datetime(2024, 1, 5, 2, tzinfo=dt.UTC)
    for task_id in ("extract_histories", "infer_user_links", "score_topk"):
        assert "--full" not in _render(dag, task_id, {}, when)
        assert "--full" in _render(dag, task_id, {"full_run": True}, when)
    for task_id in ("precompute_candidates", "validate_publish"):  # they take no such flag
        assert "--full" not in _render(dag, task_id, {"full_run": True}, when)


def test_run_without_logical_date_uses_run_after_as_ds(dagbag: Any) -> None:
    args = _render(dagbag.dags["lime_candidate_refresh"], "precompute_candidates", {}, None)
    assert _flag(args, "--ds") == "2024-03-09"


def test_nightly_run_of_ds_starts_after_ds_has_ended(dagbag: Any) -> None:
    from airflow.timetables.base import TimeRestriction

    timetable = _serialized(dagbag.dags[NIGHTLY]).timetable
    first = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(
        earliest=dt.datetime(2024, 1, 1, tzinfo=dt.UTC), latest=None, catchup=True))
    assert first.logical_date.date() == dt.date(2024, 1, 1)  # ds
    assert first.run_after == dt.datetime(2024, 1, 2, 2, tzinfo=dt.UTC)


def test_tasks_spark_submit_the_jobs_with_the_venv_python(dagbag: Any) -> None:
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            assert task.application == str(REPO / "jobs" / f"{task.task_id}.py")
            assert Path(task.application).is_file()
            assert task.env_vars["PYSPARK_PYTHON"] == sys.executable
            assert task.env_vars["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_candidate_refresh_runs_on_catalogue_or_model_change_and_nightly_publishes(dagbag: Any) -> None:
    refresh = dagbag.dags["lime_candidate_refresh"]
    triggers = {a.name for a in refresh.timetable.asset_condition.objects}
    assert triggers == {"lime_rank.items", "lime_rank.model"}  # either one triggers a run
    assert type(refresh.timetable.asset_condition).__name__ == "AssetAny"
    outlets = [a.name for a in refresh.task_dict["precompute_candidates"].outlets]
    assert outlets == ["lime_rank.candidate_link_weights"]
    nightly = dagbag.dags[NIGHTLY]
    assert {t.task_id: [a.name for a in t.outlets] for t in nightly.tasks if t.outlets} == {
        "validate_publish": ["lime_rank.recommendations"]}


def test_operator_drops_empty_args_and_tags_its_asset_events_with_the_partition(
    dagbag: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    dag = dagbag.dags[NIGHTLY]
    task = copy.deepcopy(dag.task_dict["validate_publish"])
    params = _serialized(dag).params.deep_merge({"lakehouse": "/lake"}).validate()
    run = SimpleNamespace(logical_date=dt.datetime(2024, 1, 5, 2, tzinfo=dt.UTC), run_after=None)
    task.render_template_fields({"params": params, "run_id": "r1", "dag_run": run}, jinja_env=dag.get_template_env())
    assert "" in task.application_args  # the optional flags rendered empty

    submitted: list[list[str]] = []
    monkeypatch.setattr(SparkSubmitOperator, "execute", lambda op, ctx: submitted.append(op.application_args))
    module_globals = type(task).execute.__globals__  # lime_rank_common, as the DagBag loaded it
    monkeypatch.setitem(module_globals, "_default_master_if_undefined", lambda conn_id: None)
    events: dict[Any, SimpleNamespace] = {asset: SimpleNamespace(extra={}) for asset in task.outlets}
    task.execute({"outlet_events": events})
    assert submitted == [["--lakehouse", "/lake", "--ds", "2024-01-05", "--run-id", "r1", "--top-k", "10"]]
    assert [e.extra for e in events.values()] == [{"ds": "2024-01-05", "lakehouse": "/lake"}]


def test_a_packed_environment_goes_to_the_executors_while_the_driver_keeps_its_python(dagbag_with_env: Any) -> None:
    bag = dagbag_with_env(LIME_RANK_ENV_ARCHIVE="/shared/lime-rank-env.zip")
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            assert task.conf["spark.archives"] == "/shared/lime-rank-env.zip#environment"
            assert task.conf["spark.pyspark.python"] == "./environment/bin/python"
            assert task.conf["spark.pyspark.driver.python"] == sys.executable
            # an environment variable would win over spark.pyspark.python on the executors
            assert "PYSPARK_PYTHON" not in task.env_vars
            assert task.env_vars["PYSPARK_DRIVER_PYTHON"] == sys.executable


@pytest.mark.parametrize(("name", "value", "message"), [
    ("LIME_RANK_ENV_ARCHIVE", "/shared/env.rar", "$LIME_RANK_ENV_ARCHIVE must be a .tar.gz, .tgz, .tar or .zip"),
    ("LIME_RANK_INFERENCE_DEVICE", "tpu", "$LIME_RANK_INFERENCE_DEVICE must be one of ['auto', 'cpu', 'cuda']"),
])
def test_a_bad_deployment_setting_is_an_import_error_naming_it(dagbag_with_env: Any, name: str, value: str,
                                                               message: str) -> None:
    bag = dagbag_with_env(**{name: value})
    assert len(bag.import_errors) == 2
    assert all(message in e for e in bag.import_errors.values())


def test_the_inference_device_param_reaches_both_model_jobs(dagbag: Any, dagbag_with_env: Any) -> None:
    when = dt.datetime(2024, 1, 5, 2, tzinfo=dt.UTC)
    nightly = dagbag.dags[NIGHTLY]
    for task_id in ("infer_user_links", "precompute_candidates"):
        assert _flag(_render(nightly, task_id, {}, when), "--inference-device") == "auto"
        assert _flag(_render(nightly, task_id, {"inference_device": "cpu"}, when), "--inference-device") == "cpu"
    refresh = dagbag_with_env(LIME_RANK_INFERENCE_DEVICE="cpu").dags["lime_candidate_refresh"]
    assert _flag(_render(refresh, "precompute_candidates", {}, None), "--inference-device") == "cpu"
