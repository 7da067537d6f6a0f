"""Training: schedules, bag loading, the per-fold training loop, tracking."""
