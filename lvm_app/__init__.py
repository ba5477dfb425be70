"""The application: the commands (run/svi.py: cli.py, training_run.py; run/gap.py: gap.py; run/probe.py:
probe.py; run/gap_atlas.py: gap_atlas.py), the registry of experiments, run directories (reading a
saved run once, what a resume may change, the lock) and the gap report's and atlas's outputs. It
stands above the library: nothing in pyro_models/, guides/ or inference/ imports it
(tests/test_layout.py). Each model's glue lives next to it (pyro_models/<model>/experiment.py)
and follows pyro_models.experiment_kit.protocol.Experiment."""
