"""The application: the command line (cli.py, run/svi.py), the registry of models, run
directories, the gap report's command line and the gap atlas. Each model's own glue lives next
to it (pyro_models/<model>/experiment.py) and follows pyro_models.experiment_kit.protocol.Experiment."""
