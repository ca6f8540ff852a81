"""What runs inside Spark tasks or sets Spark up: the session, the model runtime, partitioning, the inference
and scoring tasks, the candidate matrix."""
