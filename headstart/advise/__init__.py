"""Advisor: dataset facts + transferability signals per tap -> the four-quadrant plan (``headstart advise``).

Modules: ``facts`` (images per class, sizes, copies, the size cue), ``logme`` (LogME evidence), ``probe``
(cross-validated ridge probe, one-standard-error choice), ``transfer`` (per-tap scores, ImageNet's head),
``plan`` (quadrant and fit options, in words), ``run`` (all of it on a folder), ``report`` (the text).
"""

from headstart.advise.logme import logme
from headstart.advise.plan import Plan, make_plan
from headstart.advise.run import advise

__all__ = ["Plan", "advise", "logme", "make_plan"]
