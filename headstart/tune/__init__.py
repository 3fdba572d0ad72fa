"""`headstart tune`: coarse-to-fine search of the fine-tuning options (``study``) over ``space``."""

from headstart.tune.study import tune

__all__ = ["tune"]
