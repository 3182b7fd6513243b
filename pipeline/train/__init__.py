"""Training: the trainable part fitted on Ray Train, from a feature set or end to end.

Owns: the driver (:mod:`~pipeline.train.fit`), the epoch loop every fit runs
(:mod:`~pipeline.train.loop`), what a worker reads (:mod:`~pipeline.train.data`,
:mod:`~pipeline.train.streaming`), checkpoints, metrics and evaluation.
May import: :mod:`pipeline.features` and below.
"""
