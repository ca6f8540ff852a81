"""Tools that deploy the pipeline rather than run it: pack the Python environment Spark executors need
into one archive for ``spark.archives`` (:mod:`pipelines.deploy.pack_env`, ``lime-rank pack-env``),
and (to come) a local standalone cluster with Airflow to run the DAGs against it.
"""
