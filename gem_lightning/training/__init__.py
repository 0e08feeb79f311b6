"""Training: the LightningModule, distillation, schedules, metric names and the callbacks."""
