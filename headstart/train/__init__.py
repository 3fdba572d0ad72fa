"""Fine-tuning: parameter groups, optimisers, LR schedules, EMA, the training loop, TTA.

    from headstart.train import ImageSet, train, OptimConfig
    result = train(model, ImageSet(paths, labels), val, freeze=4, epochs=10,
                   optim_cfg=OptimConfig(lr=1e-3), patience=3, ema=0.999, run_dir="runs/ft")
"""

from headstart.errors import TrainingDiverged
from headstart.train.checkpoint import TrainState, clone_state, load_checkpoint, save_checkpoint
from headstart.train.ema import EMA
from headstart.train.freeze import FreezeState, freeze_stages, set_train_mode
from headstart.train.loop import TrainResult, resolve_device, train
from headstart.train.optim import OptimConfig, build_optimizer, build_param_groups, l1_penalty
from headstart.train.prefix import ImageSet, PrefixFeatureSet, SuffixModel
from headstart.train.schedules import LRSchedule, ScheduleConfig, cycle_ends
from headstart.train.tta import TTA_MODES, TTAViews, evaluate

__all__ = [
    "EMA", "TTA_MODES", "FreezeState", "ImageSet", "LRSchedule", "OptimConfig", "PrefixFeatureSet",
    "ScheduleConfig", "SuffixModel", "TTAViews", "TrainResult", "TrainState", "TrainingDiverged", "build_optimizer",
    "build_param_groups", "clone_state", "cycle_ends", "evaluate", "freeze_stages", "l1_penalty",
    "load_checkpoint", "resolve_device", "save_checkpoint", "set_train_mode", "train",
]
