"""Glue between models, guides, the runner and the estimators: one Experiment per model."""
