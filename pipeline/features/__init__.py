"""Featurizing: a network's frozen prefix run once over the images into Parquet feature sets.

Owns: what a featurize run produces and its cache key (:mod:`~pipeline.features.plan`), the run
itself (:mod:`~pipeline.features.run`), and the check that a feature set fits a network.
May import: :mod:`pipeline.engine` and below.
"""
