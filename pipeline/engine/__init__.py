"""The engine: what runs frozen layers on images, and the Ray Data pass that feeds it.

Owns: the runtimes behind one :class:`~pipeline.engine.runtime.EngineSpec` (ONNX Runtime,
:mod:`~pipeline.engine.runtime`; eager torch and the ONNX export, :mod:`~pipeline.engine.export`),
the model actors (:mod:`~pipeline.engine.actors`) and the decode -> model -> write pass every
image job shares (:mod:`~pipeline.engine.dataflow`).
May import: :mod:`pipeline.data`, :mod:`pipeline.net`, :mod:`pipeline.runs`,
:mod:`pipeline.settings`.
"""
