"""
### LIME Rank candidate refresh

Rebuilds `candidate_link_weights` as soon as the catalogue (`items`) or the
model checkpoint changes, so that the nightly run finds the candidate table of
its model version already complete.

Triggered by an event on either Asset (no time schedule):

* `lime_rank.items`: the `items` table of the lakehouse (the catalogue
  ingestion emits it, e.g. `POST /api/v2/assets/events`);
* `lime_rank.model`: the checkpoint (model training / promotion emits it).

Task graph:

```
precompute_candidates
```

`precompute_candidates` is idempotent per model version: it skips when
`candidate_link_weights` is already complete for the checkpoint's
model_version and the current catalogue version, so a duplicate event or a
retry costs one Spark start-up and no writes. On success it emits the Asset
`lime_rank.candidate_link_weights`.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG
from lime_rank_common import (
    CANDIDATE_LINK_WEIGHTS,
    ITEMS,
    MODEL,
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

with DAG(
    dag_id="lime_candidate_refresh",
    description="items or model changed -> rebuild candidate_link_weights(model_version)",
    doc_md=__doc__,
    schedule=ITEMS | MODEL,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=4),
    default_args=default_args(),
    tags=[*TAGS, "candidates"],
    params={"lakehouse": lakehouse_param(), "checkpoint": checkpoint_param(),
            "inference_device": inference_device_param()},
) as dag:
    precompute_candidates = LimeRankSparkSubmitOperator(
        task_id="precompute_candidates", job="precompute_candidates",
        application_args=[
            "--lakehouse", "{{ params.lakehouse }}", "--ds", RUN_DATE, "--run-id", RUN_ID,
            "--checkpoint", "{{ params.checkpoint }}", "--inference-device", "{{ params.inference_device }}",
        ],
        outlets=[CANDIDATE_LINK_WEIGHTS],
    )
