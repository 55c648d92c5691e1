"""Training, evaluation, checkpoints, distributed helpers and pictures of results."""
