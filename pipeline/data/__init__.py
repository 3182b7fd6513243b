"""Data: images in, feature sets out, as files.

Owns: planning sources into units (:mod:`~pipeline.data.plan`, :mod:`~pipeline.data.listing`,
:mod:`~pipeline.data.manifests`), reading them (:mod:`~pipeline.data.shards`,
:mod:`~pipeline.data.rows`), decoding (:mod:`~pipeline.data.decode`), the feature-set format (its
schema :mod:`~pipeline.data.schema`, writing :mod:`~pipeline.data.parts` and
:mod:`~pipeline.data.writers`, reading :mod:`~pipeline.data.featureset`) and the generated demo
dataset (:mod:`~pipeline.data.shapes`). Nothing here loads torch.
May import: :mod:`pipeline.runs`, :mod:`pipeline.settings`.
"""
