"""Training students from the embedding corpus on Ray Train (`samdata distill`): the config
sections, the CPU ingest, losses, prompts, the per-worker training loop, checkpoints and
validation."""
