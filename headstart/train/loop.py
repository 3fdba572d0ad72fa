"""The fine-tuning loop, readable top to bottom: ``train()``.

Every epoch, in this order and visibly in the loop: train steps (each loss checked for divergence before
its step, the EMA updated after it) → validation of the evaluated weights (the EMA's when on) → divergence
check of the validation loss → best-state tracking → snapshot at a schedule cycle end → curves line →
early-stopping decision → checkpoint → the optional ``on_epoch_end(row)``, which may end training there.

Exact resume: the state at every epoch end (weights, optimizer moments, schedule position, EMA shadow,
best weights and early-stopping count, RNG states, history) is checkpointed, and nothing else carries over
from one epoch to the next — batch order comes from ``default_rng([seed, epoch])``, augmentations from
``default_rng([seed, epoch, index])``. So a run killed at any point and resumed from its last checkpoint
ends with the same weights (CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from headstart.engine.base import autocast_for, resolve_device
from headstart.errors import ConfigError, DatasetError, TrainingDiverged
from headstart.evaluate.curves import append_curve, reset_curves
from headstart.models.base import Backbone
from headstart.train.checkpoint import TrainState, capture_rng, checkpoint_exists, clone_state, load_checkpoint, \
    restore_rng, save_checkpoint, save_tensors
from headstart.train.distributed import Dist, broadcast_state, check_batch, current, deal, pick, same_everywhere, \
    sum_across, train_shard
from headstart.train.ema import EMA
from headstart.train.freeze import freeze_stages, set_train_mode
from headstart.train.optim import OptimConfig, build_optimizer, build_param_groups, l1_penalty
from headstart.train.prefix import Feed, ImageSet, SuffixModel, make_feeds
from headstart.train.schedules import LRSchedule, ScheduleConfig

__all__ = ["MAX_LOSS", "TrainResult", "resolve_device", "snapshot_path", "train"]

# A cross-entropy of 1e4 needs logit gaps of about 1e4, which only exploded weights produce (an untrained
# head scores about log K, a confidently wrong one tens): such a loss is divergence, like NaN/inf.
MAX_LOSS = 1e4


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_val_loss: float
    stop_reason: str
    feed: str  # how the trainable part was fed, e.g. "cached prefix (4 stages, onnxruntime)"
    checkpoint: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    kept_epoch: int = 0  # the epoch whose weights ``model`` holds on return (best one, or the last)
    snapshots: list[Path] = field(default_factory=list)  # weights saved at ``snapshot_epochs``, in order


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """Where ``train`` saves the (evaluated) weights after ``epoch`` completed epochs."""
    return Path(run_dir) / "snapshots" / f"epoch-{epoch:03d}.safetensors"


def train(model: Backbone, train_data: ImageSet, val_data: ImageSet | None, *,
          optim_cfg: OptimConfig = OptimConfig(), sched_cfg: ScheduleConfig = ScheduleConfig(), epochs: int = 10,
          freeze: int = 0, freeze_bn: bool = False, label_smoothing: float = 0.0, ema: float = 0.0,
          ema_warmup: bool = True, patience: int | None = None, snapshot_epochs: Sequence[int] = (), seed: int = 0,
          run_dir: str | Path | None = None, resume: bool = False, device: str | torch.device = "auto",
          batch_size: int = 32, workers: int | None = None, cache: bool | None = None,
          cache_dtype: type = np.float16, backend: str = "auto", channels_last: bool | None = None,
          on_epoch_end: Callable[[dict[str, Any]], str | None] | None = None) -> TrainResult:
    """Fine-tune ``model`` (first ``freeze`` stages frozen) on ``train_data``, validating on ``val_data``.

    ``ema`` > 0: keep an EMA of the weights (decay ``ema``, warm-up per ``ema_warmup``); it is what is
    validated, kept as best, snapshotted and, at the end, kept. ``patience``: early stopping on the validation
    loss, restoring the best epoch's (evaluated) weights; None (or no ``val_data``) trains every epoch.
    ``snapshot_epochs``: save the evaluated weights after these epochs (e.g. ``cycle_ends``) to
    ``run_dir/snapshots``. ``cache``: None → cache the frozen prefix's outputs when ``train_data`` is not
    augmented; False → run the prefix every batch; ``backend`` is the prefix's engine. ``resume`` continues
    from ``run_dir/checkpoints/last`` (same settings required). ``channels_last`` None: on for CPU (1.3-1.4x
    faster lite0 steps here) and CUDA, where steps also run under bf16 autocast. With ``run_dir``,
    ``curves.jsonl`` logs every epoch. Under torchrun, each process trains its share of every (global)
    ``batch_size`` and only rank 0 writes (``headstart.train.distributed``).
    ``on_epoch_end(row)`` sees each epoch's row after its checkpoint; if it returns a non-empty string,
    training stops there with that as the stop reason (a time budget, a pruned trial). On return ``model``
    is in eval mode; checkpoints hold the live (non-EMA) weights.

        res = train(model, ImageSet(paths, labels), val, freeze=4, epochs=10, ema=0.999,
                    patience=3, run_dir="runs/ft")
    """
    t_setup, dev, d = time.perf_counter(), resolve_device(device), current()
    if d.enabled:  # the process group's device: NCCL's is this process's GPU, gloo's the CPU
        dev = torch.device("cuda", d.local_rank) if d.backend == "nccl" else torch.device("cpu")
    local_batch = check_batch(batch_size, d)  # under torchrun: this process's share of the global batch
    run_dir = Path(run_dir) if run_dir is not None else None
    writes = run_dir is not None and d.is_main  # one writer of run files: rank 0
    ckpt_dir = run_dir / "checkpoints" if run_dir is not None else None
    snapshot_epochs = sorted({int(e) for e in snapshot_epochs})
    if snapshot_epochs and run_dir is None:
        raise ConfigError("snapshot_epochs needs a run_dir to save the snapshots in")
    fz = freeze_stages(model.to(dev), freeze, freeze_bn=freeze_bn)  # before DDP wraps: it registers trainables
    broadcast_state(model, d)
    suffix, cl = SuffixModel(model, fz.k), (dev.type in ("cpu", "cuda")) if channels_last is None else channels_last
    if cl:
        suffix.to(memory_format=torch.channels_last)
    # Rank 0 keeps big prefix features in the run; the others in a scratch folder of their own, removed at exit.
    scratch = tempfile.TemporaryDirectory(prefix="headstart-prefix-") if d.enabled and not d.is_main else None
    train_feed, val_feed, how = make_feeds(
        model, fz.k, train_data, val_data, seed=seed, batch_size=batch_size, device=dev, channels_last=cl,
        cache=cache, cache_dtype=cache_dtype, backend=backend, workers=workers,
        store_dir=run_dir / "prefix_cache" if writes else Path(scratch.name) if scratch is not None else None)
    if not same_everywhere([len(train_feed), len(val_feed) if val_feed is not None else -1], d):
        raise DatasetError("the processes decoded different numbers of images (a file readable from one machine "
                           "but not another?); every process must see the same files")
    stepped = DistributedDataParallel(suffix, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if d.enabled else suffix  # what the steps run: gradients averaged over the processes
    groups = build_param_groups(model, optim_cfg, freeze=fz.k)
    optimizer = build_optimizer(groups, optim_cfg)
    sched = LRSchedule(optimizer, sched_cfg, epochs=epochs, steps_per_epoch=math.ceil(len(train_feed) / batch_size))
    avg = EMA(ema, warmup=ema_warmup) if ema > 0 else None
    stopping = patience is not None and val_feed is not None
    loop_cfg = {"ema": ema, "ema_warmup": ema_warmup, "patience": patience if stopping else None,
                "snapshot_epochs": snapshot_epochs}
    cfg_hash = _config_hash(model, train_data, optim_cfg, sched_cfg, epochs, fz.to_dict(), label_smoothing, seed,
                            batch_size, loop_cfg)
    s = _LoopState()
    if resume and ckpt_dir is not None and checkpoint_exists(ckpt_dir):
        s = _resume(load_checkpoint(ckpt_dir), cfg_hash, ckpt_dir, model, optimizer, sched, avg)
    else:
        torch.manual_seed(seed)  # dropout / drop-path draws: same seed, same run
    if avg is not None and not avg.shadow:
        avg.init(model)
    if writes:
        reset_curves(run_dir, s.epoch)  # lines of epochs after the checkpoint are redone, so dropped
    if s.rng is not None:
        restore_rng(s.rng)  # last, so that set-up work cannot shift the RNG streams
    timings = {"setup_s": time.perf_counter() - t_setup, "train_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
    lr = optimizer.param_groups[-1]["lr"]

    for epoch in range(s.epoch, epochs):
        if s.stop_reason:
            break
        t0 = time.perf_counter()
        set_train_mode(model, fz.k, fz.freeze_bn)
        if d.enabled:  # dropout / drop-path masks of its own per process (one seed would repeat them W times)
            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, d.rank]).generate_state(1)[0]))
        order = np.random.default_rng([seed, epoch]).permutation(len(train_feed))
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_feed.batches(train_shard(order, d), local_batch, epoch):
            with autocast_for(dev):
                logits = stepped(x)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            # A process whose loss diverges raises; torchrun then stops the others (no collective per step).
            lr, value = optimizer.param_groups[-1]["lr"], loss.item()
            _check_train_loss(value, epoch, s.step, lr, s.last_checkpoint)  # before the step: weights stay finite
            if optim_cfg.l1 > 0:  # after the check: a large penalty is the user's choice, not a divergence
                loss = loss + optim_cfg.l1 * l1_penalty(groups)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
            if avg is not None:
                avg.update(model)
            s.step += 1
            loss_sum, seen = loss_sum + value * len(y), seen + len(y)
            correct += int((logits.argmax(1) == y).sum())
        loss_sum, correct, seen = sum_across([loss_sum, correct, seen], d)
        t1 = time.perf_counter()
        with avg.swap(model) if avg is not None else contextlib.nullcontext():  # EMA weights are the evaluated ones
            val_loss, val_acc = _validate(suffix, model, val_feed, local_batch, d)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": correct / max(seen, 1), "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": time.perf_counter() - t0}
            _check_val_loss(val_loss, val_acc, epoch, lr, s.last_checkpoint)  # before it is checkpointed
            sched.epoch_end(val_loss if val_feed is not None else None)
            if val_loss < s.best:  # NaN compares False: a non-finite epoch is never the best
                s.best, s.best_epoch, s.bad = val_loss, epoch + 1, 0
                s.best_state = clone_state(model) if stopping else {}
            else:
                s.bad += 1
            if epoch + 1 in snapshot_epochs and writes:
                save_tensors(snapshot_path(run_dir, epoch + 1), clone_state(model))
        s.history.append(row)
        if writes:
            append_curve(run_dir, row)
        if stopping and s.bad >= patience:
            s.stop_reason = (f"early stopping: val loss has not improved for {s.bad} epochs "
                             f"(best {s.best:.4f} at epoch {s.best_epoch})")
        t2 = time.perf_counter()
        if ckpt_dir is not None and writes:
            save_checkpoint(ckpt_dir, s.to_checkpoint(epoch + 1, model, optimizer, sched, avg, fz.to_dict(), cfg_hash))
            s.last_checkpoint = f"{ckpt_dir / 'last'} (epoch {epoch + 1})"
        timings["train_s"] += t1 - t0
        timings["eval_s"] += t2 - t1
        timings["checkpoint_s"] += time.perf_counter() - t2
        why = on_epoch_end(dict(row)) if on_epoch_end is not None else None
        if (why := pick(why, d)) and not s.stop_reason:  # rank 0's call (a clock) decides for every process
            s.stop_reason = str(why)  # early stopping's reason, when both stop here, is the one kept

    kept_epoch = _keep_final_weights(model, s, avg)
    model.eval()
    snapshots = [snapshot_path(run_dir, e) for e in snapshot_epochs if e <= len(s.history)] if run_dir else []
    return TrainResult(s.history, s.best_epoch, s.best, s.stop_reason, how,
                       ckpt_dir / "last" if ckpt_dir is not None else None, timings, kept_epoch, snapshots)


@dataclass
class _LoopState:
    """What carries over from epoch to epoch, and so what a checkpoint holds besides the torch objects."""

    epoch: int = 0  # completed epochs
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = math.inf
    best_epoch: int = 0
    bad: int = 0  # epochs since the best one
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stop_reason: str = ""
    last_checkpoint: str = "none yet"
    rng: dict[str, Any] | None = None

    def to_checkpoint(self, epoch: int, model: Backbone, optimizer: torch.optim.Optimizer, sched: LRSchedule,
                      avg: EMA | None, freeze: dict[str, Any], cfg_hash: str) -> TrainState:
        return TrainState(epoch=epoch, step=self.step, model=model.state_dict(), optimizer=optimizer.state_dict(),
                          scheduler=sched.state_dict(), ema=avg.state_dict() if avg is not None else {},
                          rng=capture_rng(), freeze=freeze, config_hash=cfg_hash, best_metric=self.best,
                          best_epoch=self.best_epoch, best_state=self.best_state, history=self.history,
                          extra={"bad_epochs": self.bad, "stop_reason": self.stop_reason})


def _resume(ck: TrainState, cfg_hash: str, ckpt_dir: Path, model: Backbone, optimizer: torch.optim.Optimizer,
            sched: LRSchedule, avg: EMA | None) -> _LoopState:
    """Load the checkpoint's weights, optimizer, schedule and EMA; return the loop state it holds."""
    if ck.config_hash != cfg_hash:
        raise ConfigError(f"{ckpt_dir} was written by a run with other settings (model, data, optimizer, "
                          "schedule, epochs, freeze, EMA, early stopping, snapshots, seed or batch size); resume "
                          "with the same ones, or start afresh in a new run dir")
    model.load_state_dict(ck.model)
    optimizer.load_state_dict(ck.optimizer)
    sched.load_state_dict(ck.scheduler)
    if avg is not None:
        avg.load_state_dict(ck.ema)
    return _LoopState(epoch=ck.epoch, step=ck.step, history=list(ck.history),
                      best=math.inf if ck.best_metric is None else float(ck.best_metric), best_epoch=ck.best_epoch,
                      bad=int(ck.extra.get("bad_epochs", 0)), best_state=dict(ck.best_state),
                      stop_reason=str(ck.extra.get("stop_reason", "")),
                      last_checkpoint=f"{ckpt_dir / 'last'} (epoch {ck.epoch})", rng=ck.rng)


def _keep_final_weights(model: Backbone, s: _LoopState, avg: EMA | None) -> int:
    """Leave the weights to keep in ``model``: the best epoch's when early stopping tracked them, else the
    last epoch's evaluated ones (the EMA's when on). Returns the epoch they come from."""
    if s.best_state:
        model.load_state_dict(s.best_state)
        return s.best_epoch
    if avg is not None:
        avg.copy_to(model)
    return len(s.history)


def _advice(lr: float, last_checkpoint: str) -> str:
    return (f"lower the learning rate (now {lr:.3g}), e.g. by 10x, or use warm-up / label smoothing; "
            f"the last good checkpoint is {last_checkpoint}")


def _check_train_loss(loss: float, epoch: int, step: int, lr: float, last_checkpoint: str) -> None:
    """Stop before a NaN/inf or exploding (> ``MAX_LOSS``) training loss is stepped into the weights."""
    if not math.isfinite(loss) or loss > MAX_LOSS:
        raise TrainingDiverged(f"training diverged: loss became {loss:.4g} at epoch {epoch + 1} step {step}; "
                               + _advice(lr, last_checkpoint))


def _check_val_loss(loss: float, acc: float, epoch: int, lr: float, last_checkpoint: str) -> None:
    """Stop at a diverged validation loss before the epoch is checkpointed: the last checkpoint stays good."""
    if math.isfinite(acc) and (not math.isfinite(loss) or loss > MAX_LOSS):  # no val data: both NaN by design
        raise TrainingDiverged(f"training diverged: validation loss became {loss:.4g} at the end of epoch "
                               f"{epoch + 1}; " + _advice(lr, last_checkpoint))


@torch.no_grad()
def _validate(suffix: SuffixModel, model: Backbone, feed: Feed | None, batch_size: int,
              d: Dist) -> tuple[float, float]:
    """Mean cross-entropy (no label smoothing) and accuracy on ``feed``, each image counted once however
    many processes share it; NaN without validation data."""
    if feed is None:
        return math.nan, math.nan
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in feed.batches(deal(len(feed), d), batch_size):
        with autocast_for(x.device):
            logits = suffix(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    loss_sum, correct = sum_across([loss_sum, correct], d)
    return loss_sum / max(len(feed), 1), correct / max(len(feed), 1)


def _config_hash(model: Backbone, data: ImageSet, optim_cfg: OptimConfig, sched_cfg: ScheduleConfig, epochs: int,
                 freeze: dict[str, Any], label_smoothing: float, seed: int, batch_size: int,
                 loop: dict[str, Any]) -> str:
    """What must not change across a resume (engine, workers, caching only change speed)."""
    desc = {"model": model.name, "weights": model.weights_id, "classes": model.num_classes, "n_train": len(data),
            # surrogateescape: a non-UTF-8 file name (b"caf\xe9.jpg") is a lone surrogate in a str
            "files": hashlib.sha256("\n".join(map(str, data.paths)).encode("utf-8", "surrogateescape")).hexdigest(),
            "augment": data.augment.to_dict() if data.augment is not None else None, "optim": asdict(optim_cfg),
            "sched": asdict(sched_cfg), "epochs": epochs, "freeze": freeze, "label_smoothing": label_smoothing,
            "seed": seed, "batch_size": batch_size, "loop": loop}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()
