"""The network: a torch.fx-traced graph with a frozen set and its frontier.

Owns: tracing (:mod:`~pipeline.net.tracing`), :class:`~pipeline.net.graph.TransferNet`, the
builder and its op registry (:mod:`~pipeline.net.builder`, :mod:`~pipeline.net.ops`), layers and
their JSON specs, saving and loading without pickle (:mod:`~pipeline.net.saving`,
:mod:`~pipeline.net.graphspec`), the model zoo and the tiny example networks, the summary,
fine-tune optimizers, and the networks jobs train (:mod:`~pipeline.net.heads`).
May import: :mod:`pipeline.runs`, :mod:`pipeline.settings`.
"""
