"""Training: the shared engine (`tumoraug.training.loop`) and the per-stage tasks."""
