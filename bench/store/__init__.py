"""What outlives a process: the content-addressed cache with atomic writes, checkpoints, the stage
keys that name cached artifacts, and the schema-validated run records."""
