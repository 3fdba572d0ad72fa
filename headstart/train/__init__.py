"""Fine-tuning: parameter groups, optimisers, LR schedules, augmentation-aware training loops.

>>> from headstart.train import ImageSet, train, OptimConfig                       # doctest: +SKIP
>>> result = train(model, ImageSet(paths, labels), val, freeze=4, epochs=10,      # doctest: +SKIP
...                optim_cfg=OptimConfig(lr=1e-3), callbacks=[EarlyStopping(3)], run_dir="runs/ft")
"""

from headstart.train.callbacks import (
    EMA,
    Callback,
    CurveLogger,
    EarlyStopping,
    LoopState,
    NonFiniteGuard,
    SnapshotEnsemble,
    TrainingDiverged,
    diagnose,
)
from headstart.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from headstart.train.freeze import FreezeState, freeze_stages, set_train_mode, split_prefix
from headstart.train.loop import TrainResult, resolve_device, train
from headstart.train.optim import OptimConfig, build_optimizer, build_param_groups, l1_penalty
from headstart.train.prefix import ImageSet, PrefixFeatureSet, SuffixModel
from headstart.train.schedules import LRSchedule, ScheduleConfig
from headstart.train.tta import TTA_MODES, TTAViews, evaluate

__all__ = [
    "EMA", "TTA_MODES", "Callback", "CurveLogger", "EarlyStopping", "FreezeState", "ImageSet", "LRSchedule",
    "LoopState", "NonFiniteGuard", "OptimConfig", "PrefixFeatureSet", "ScheduleConfig", "SnapshotEnsemble",
    "SuffixModel", "TTAViews", "TrainResult", "TrainState", "TrainingDiverged", "build_optimizer",
    "build_param_groups", "diagnose", "evaluate", "freeze_stages", "l1_penalty", "load_checkpoint",
    "resolve_device", "save_checkpoint", "set_train_mode", "split_prefix", "train",
]
