"""Fine-tuning: parameter groups, optimisers, LR schedules, EMA, the training loop, TTA.

    from headstart.train import ImageSet, train, OptimConfig
    result = train(model, ImageSet(paths, labels), val, freeze=4, epochs=10,
                   optim_cfg=OptimConfig(lr=1e-3), patience=3, ema=0.999, run_dir="runs/ft")
"""

from __future__ import annotations

from headstart.lazy import lazy_exports

# Public names → their module, imported on first use: `headstart.config` reads OptimConfig and ScheduleConfig
# from here, and importing the loop eagerly would pull scikit-learn into every command's start-up.
_EXPORTS = {
    "TrainingDiverged": "headstart.errors",
    **dict.fromkeys(["TrainState", "clone_state", "load_checkpoint", "save_checkpoint"], "headstart.train.checkpoint"),
    "EMA": "headstart.train.ema",
    **dict.fromkeys(["FreezeState", "freeze_stages", "set_train_mode"], "headstart.train.freeze"),
    **dict.fromkeys(["TrainResult", "resolve_device", "train"], "headstart.train.loop"),
    **dict.fromkeys(["OptimConfig", "build_optimizer", "build_param_groups", "l1_penalty"], "headstart.train.optim"),
    **dict.fromkeys(["ImageSet", "PrefixFeatureSet", "SuffixModel"], "headstart.train.prefix"),
    **dict.fromkeys(["LRSchedule", "ScheduleConfig", "cycle_ends"], "headstart.train.schedules"),
    **dict.fromkeys(["TTA_MODES", "TTAViews", "evaluate"], "headstart.train.tta"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
