"""Errors headstart raises on purpose.

Every message says what went wrong *and what to do about it*; the CLI prints it as one line, no traceback.
"""

from __future__ import annotations


class HeadstartError(Exception):
    """Base class: an expected failure with an actionable message."""


class UnknownModelError(HeadstartError):
    """A model name that is not in the zoo."""


class OnnxImportError(HeadstartError):
    """An ONNX file that cannot be read or converted into a backbone."""


class WeightsNotInstalledError(HeadstartError):
    """Pretrained weights for a zoo entry are not installed."""


class UnknownTapError(HeadstartError):
    """A layer/tap name the backbone does not have."""


class DatasetError(HeadstartError):
    """The image folder cannot be used as a dataset (empty, one class, missing path...)."""


class DecodeError(HeadstartError):
    """One file could not be decoded as an image (corrupt, truncated, not an image, too large)."""


class ConfigError(HeadstartError):
    """An invalid option value or configuration file."""


class BundleError(HeadstartError):
    """A saved model bundle is missing, incomplete or unsafe."""


class CheckpointError(HeadstartError):
    """A training checkpoint is missing, damaged or unsafe."""


class NonFiniteError(HeadstartError):
    """NaN or infinite numbers where finite ones are required (CNN codes, predictions)."""


class TrainingDiverged(HeadstartError):
    """The training loss became NaN or infinite (or exploded)."""


def name_file(e: OSError, path: object) -> OSError:
    """``e`` naming ``path`` when the OS named no file (``write``/``fsync`` errors such as ENOSPC do not),
    so that the one-line error says *where* the disk was full."""
    if e.filename is None:
        e.filename = str(path)
    return e
