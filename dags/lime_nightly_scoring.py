"""
### LIME Rank nightly scoring

Every night, for the day that just ended (`ds`), spark-submit the four jobs that
turn the `events` table into the `recommendations(ds)` partition apps read, then
gate and publish it:

| task | reads | writes |
|---|---|---|
| `extract_histories` | `events` up to the end of `ds` | `user_histories(ds)` (last N per user) |
| `precompute_candidates` | `items`, checkpoint | `candidate_link_weights(model_version)` |
| `infer_user_links` | `user_histories(ds)`, checkpoint | `user_links(ds)` (LIME-XOR L_P) |
| `score_topk` | `user_links(ds)`, `candidate_link_weights` | `recommendations(ds)` (top K) |
| `validate_publish` | `recommendations(ds)` and its inputs | run report, audit row, Asset |

Task graph:

```
extract_histories >> infer_user_links >> score_topk >> validate_publish
precompute_candidates >> score_topk
```

`validate_publish` is the data-quality gate: rows per user = `top_k` (fewer only
for users with fewer eligible candidates), ranks 1..K, finite scores, one
model_version across `user_links`, `candidate_link_weights` and
`recommendations`, no user lost between `user_histories(ds)` and
`recommendations(ds)`. On failure the task fails, no `published` row is written
and the Asset is not updated. Its log ends with `run report: <path>`, the HTML
report under `<lakehouse>/_reports/ds=<ds>/`.

Schedule: 02:00 UTC for the previous day (a data-interval timetable: the run of
`ds` starts when `ds` has ended, two hours of grace for late events); no
catch-up, one run at a time. Every task is a transaction on one partition and
passes `--run-id {{ run_id }}`: a retry of a run skips what that run already
committed.

Manual runs: `airflow dags trigger lime_nightly_scoring --conf '{"top_k": 20}'`
or, without a scheduler, `airflow dags test lime_nightly_scoring 2024-01-05
--conf '{"top_k": 20}'`. The Params below are validated before any task starts.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from lime_rank_common import (
    RECOMMENDATIONS,
    RUN_DATE,
    RUN_ID,
    START_DATE,
    TAGS,
    LimeRankSparkSubmitOperator,
    checkpoint_param,
    default_args,
    inference_device_param,
    lakehouse_param,
)

CANDIDATE_MODES = ["auto", "broadcast", "sharded"]

with DAG(
    dag_id="lime_nightly_scoring",
    description="events -> user_histories -> user_links -> recommendations(ds), gated and published",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=8),
    default_args=default_args(),
    tags=[*TAGS, "nightly"],
    params={
        "lakehouse": lakehouse_param(),
        "checkpoint": checkpoint_param(),
        "inference_device": inference_device_param(),
        "top_k": Param(10, type="integer", minimum=1, maximum=1000, title="top_k",
                       description="recommendations per user (K)"),
        "max_history": Param(200, type="integer", minimum=1, maximum=100_000, title="max_history",
                             description="most recent events kept per user history (N)"),
        "exclude_seen": Param(True, type="boolean", title="exclude_seen",
                              description="never recommend an item already in the user's history"),
        "candidate_mode": Param("auto", type="string", enum=CANDIDATE_MODES, title="candidate_mode",
                                description="broadcast the candidate table, shard it, or choose by size"),
        "user_candidates": Param(False, type="boolean", title="user_candidates",
                                 description="rank each user's own list from user_candidates(ds) "
                                             "(written by a retrieval stage) instead of the whole catalogue"),
        "full_run": Param(False, type="boolean", title="full_run",
                          description="recompute every user; by default each stage reuses the previous "
                                      "day's rows of users without new events when it can (the audit row "
                                      "says which mode ran and why)"),
    },
) as dag:
    partition = ["--lakehouse", "{{ params.lakehouse }}", "--ds", RUN_DATE, "--run-id", RUN_ID]
    checkpoint = ["--checkpoint", "{{ params.checkpoint }}"]
    full_run = "{{ '--full' if params.full_run else '' }}"
    # what score_topk ranked, which validate_publish must know to expect the right rows per user
    ranking = [
        "--top-k", "{{ params.top_k }}",
        "{{ '' if params.exclude_seen else '--include-seen' }}",
        "{{ '--user-candidates' if params.user_candidates else '' }}",
    ]

    extract_histories = LimeRankSparkSubmitOperator(
        task_id="extract_histories", job="extract_histories",
        application_args=[*partition, *checkpoint, "--max-history", "{{ params.max_history }}", full_run],
    )
    device = ["--inference-device", "{{ params.inference_device }}"]
    precompute_candidates = LimeRankSparkSubmitOperator(
        task_id="precompute_candidates", job="precompute_candidates",
        application_args=[*partition, *checkpoint, *device],
    )
    infer_user_links = LimeRankSparkSubmitOperator(
        task_id="infer_user_links", job="infer_user_links",
        application_args=[*partition, *checkpoint, *device, full_run],
    )
    score_topk = LimeRankSparkSubmitOperator(
        task_id="score_topk", job="score_topk",
        application_args=[*partition, *checkpoint, *ranking, "--candidate-mode", "{{ params.candidate_mode }}",
                          full_run],
    )
    validate_publish = LimeRankSparkSubmitOperator(
        task_id="validate_publish", job="validate_publish",
        application_args=[*partition, *ranking],
        outlets=[RECOMMENDATIONS],
    )

    extract_histories >> infer_user_links >> score_topk >> validate_publish
    precompute_candidates >> score_topk
