"""Sweeps: fine-tune settings and unfreeze depth searched on Ray Tune, reusing feature sets.

Owns: what the trials share and train (:mod:`~pipeline.tune.plan`), running them
(:mod:`~pipeline.tune.trials`) and what a finished sweep leaves (:mod:`~pipeline.tune.results`).
May import: :mod:`pipeline.train`, :mod:`pipeline.inference` and below.
"""
