"""Data: images in, feature sets out, as files.

Owns: sources and shard stores (:mod:`~pipeline.data.sources`, :mod:`~pipeline.data.shards`),
decoding (:mod:`~pipeline.data.decode`), the feature-set format (its schema
:mod:`~pipeline.data.schema`, writing :mod:`~pipeline.data.parts` and
:mod:`~pipeline.data.writers`, reading :mod:`~pipeline.data.featureset`) and the generated demo
dataset (:mod:`~pipeline.data.shapes`). Nothing here loads torch.
May import: :mod:`pipeline.runs`, :mod:`pipeline.settings`.
"""
