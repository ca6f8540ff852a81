"""The nightly stages, one module per DAG task, and what they share (context, quality gate, scoring plan)."""
