"""What a network edit can fail with; every message says what would work instead.

Example:

    >>> from pipeline.net.errors import UnknownNodeError
    >>> str(UnknownNodeError("no node named 'fc'; did you mean 'fc2'?"))
    "no node named 'fc'; did you mean 'fc2'?"
"""

from __future__ import annotations


class SurgeryError(ValueError):
    """An edit that cannot be applied; the message says what would work."""


class UnknownNodeError(SurgeryError, KeyError):
    def __str__(self):  # KeyError would repr() the message
        return self.args[0]


class ShapeMismatchError(SurgeryError):
    pass


class TraceError(SurgeryError):
    pass


class ZooError(ValueError):
    """A model name or weights reference that cannot be resolved; ``field`` says which
    (``name`` or ``weights``)."""

    def __init__(self, message: str, field: str = "name"):
        super().__init__(message)
        self.field = field
