"""The training error vocabulary. Each one ends a run with a clear message on its record, never a
stack trace in a log alone. Light: no torch."""

from __future__ import annotations


class TrainingError(Exception):
    """A run cannot go on; the message says why in terms a user can act on."""


class BadConfig(TrainingError):
    """A hyperparameter is out of range or unknown."""


class NotEnoughData(TrainingError):
    """The dataset is too small to train on (too few training examples, or nothing held out)."""


NotEnoughPairs = NotEnoughData
"""The name before ratings trained as well as pairs."""


class BaseModelMismatch(TrainingError):
    """The parent adapter was trained on another base model, or has another shape."""


class RunGone(TrainingError):
    """The task names a run that is not in the database."""


class ParentRefused(TrainingError):
    """The parent adapter's files are not what the registry recorded (altered, or not safetensors)."""
