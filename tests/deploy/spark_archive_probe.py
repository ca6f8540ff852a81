"""Run one Python task on ``local-cluster[1,1,1024]`` whose interpreter comes from a packed environment
(``spark.archives=ARCHIVE#environment``, ``spark.pyspark.python=./environment/bin/python``) and write
where the task's Python and modules came from as JSON to OUT.  Plain pyspark: the driver imports
nothing of the project, so nothing of ours reaches the executor but the archive.

    python tests/deploy/spark_archive_probe.py ARCHIVE OUT LOCAL_DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator


def where(_: Iterator[int]) -> Iterator[str]:
    """Runs in the executor's Python worker (pickled by value: this file runs as __main__)."""
    import pyspark
    import torch

    import lime_model
    import pipelines.runtime.inference_task as task

    yield json.dumps({"executable": sys.executable, "prefix": sys.prefix, "torch": torch.__file__,
                      "lime_model": lime_model.__file__, "task": task.__file__, "pyspark": pyspark.__file__})


def main(archive: str, out: str, local_dir: str) -> int:
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local-cluster[1,1,1024]").appName("lime-rank-pack-env-test")
             .config("spark.archives", f"{archive}#environment")
             .config("spark.pyspark.python", "./environment/bin/python")
             .config("spark.local.dir", local_dir)
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    try:
        found = spark.sparkContext.parallelize([0], 1).mapPartitions(where).collect()
    finally:
        spark.stop()
    with open(out, "w") as fh:
        fh.write(found[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
