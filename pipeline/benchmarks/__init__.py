"""Measured performance claims: the project's pipeline against a plain PyTorch baseline, same run.

One module per claim (``featurize``, ``fit``, ``sweep``); each benchmark logs its figures and
returns them as a dict. ``python -m jobs.benchmark`` is the command line.
"""
