"""What each paper's ``experiment.py`` is built from: ``protocol.py`` (what an experiment gives the
command line: ``Experiment``, ``Built``, ``RunContext``), ``real_latents.py`` (the experiment of any
model whose latents are real vectors: the VAE, the linear-Gaussian model, MFCVAE), ``batching.py``
(minibatches as a function of the step) and ``plots.py`` (PNG figures).

The kit stands above ``guides`` and ``inference`` (it builds guides and objectives and evaluates
with the estimators) and below the paper folders' glue, which the application (``lvm_app``) runs."""
