"""Deployment tools: pack the executors' environment; a local standalone cluster and Airflow services."""
