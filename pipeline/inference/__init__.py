"""Inference: an assembled network used at scale: batch prediction over images on Ray Data, and
outputs from features (:mod:`~pipeline.inference.batch`).
May import: :mod:`pipeline.features` and below.
"""
