"""Training: the loop, its loss and schedule, checkpoints, the run directory and its lock,
several processes, checkpoint averaging."""
