"""Runs: where a job's outputs live and how it reports.

Owns: run names and the ``latest`` pointer every storage keeps, local-path and URI helpers
(:mod:`~pipeline.runs.storage`), logging and the one progress line per stage
(:mod:`~pipeline.runs.logs`), and the HTML reports (:mod:`~pipeline.runs.report`).
May import: :mod:`pipeline.settings`.
"""
