"""Tools that deploy the pipeline rather than run it: pack the Python environment Spark executors need
into one archive for ``spark.archives`` (:mod:`pipelines.deploy.pack_env`, ``lime-rank pack-env``), and
run the DAGs under a real Airflow scheduler against a Spark standalone cluster on this machine
(:mod:`pipelines.deploy.cluster_demo`, ``lime-rank cluster-demo``).
"""
