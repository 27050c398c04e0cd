"""The training path: config, data preparation, model, run directory, checkpoints, the trainer."""
