"""Data-parallel fine-tuning (torch.distributed, gloo on CPU): 2 processes train as one process does with the
same global batch, only rank 0 writes, a 2-process checkpoint resumes in 1 process, and the CLI runs under
torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_class_folder
from safetensors.torch import load_file, save_file

from headstart.data import ImageFolder
from headstart.models import create_model
from headstart.train import ImageSet, train
from headstart.train.distributed import Dist, deal, train_shard

WORLD = 2
# BN statistics fixed (a process's batch statistics differ from the global batch's); no dropout (each process
# draws its own masks, one process draws others); float32 prefix features: the same inputs in both runs.
SETTINGS = dict(freeze=1, freeze_bn=True, batch_size=8, backend="torch", device="cpu", workers=1,
                cache_dtype=np.float32, seed=3)


class _Killed(Exception):
    pass


def _sets(root: Path) -> tuple[ImageSet, ImageSet]:
    folder = ImageFolder(root, test_fraction=0.0, val_fraction=0.25, seed=0)
    tr, va = folder.splits["train"], folder.splits["val"]
    return ImageSet.from_samples(tr[:24]), ImageSet.from_samples(va[:7])  # 24: 3 global batches; 7: uneven


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_test", num_classes=3)


def _worker(rank: int, port: int, root: str, out: str, run_dir: str | None, epochs: int, kill_after: int,
            stop_after: int) -> None:
    """One process of the job, started as torchrun would: the environment says who it is."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), HEADSTART_CACHE=str(Path(out) / "hs-cache"))
    torch.set_num_threads(1)
    writes: list[str] = []
    if run_dir is not None:  # every file this process creates or renames inside the run directory
        inside = os.path.realpath(run_dir)

        def audit(event: str, args: tuple) -> None:
            if event == "open" and isinstance(args[0], (str, Path)) and args[1] and set(str(args[1])) & set("wax+"):
                path = os.path.realpath(args[0])
            elif event in ("os.rename", "os.replace", "os.mkdir", "os.remove"):
                path = os.path.realpath(args[0]) if isinstance(args[0], (str, Path)) else ""
            else:
                return
            if path.startswith(inside):
                writes.append(f"{event} {path}")

        sys.addaudithook(audit)
    from headstart.train.distributed import joined

    tr, va = _sets(Path(root))
    model = _model()

    def stop(row: dict) -> str | None:
        if row["epoch"] == kill_after:  # every process dies here, as under a kill
            raise _Killed
        # Only rank 0's clock says the budget is spent (as auto's budget does): the others must stop too.
        return "budget spent" if rank == 0 and row["epoch"] == stop_after else None

    with joined("cpu"):
        try:
            res = train(model, tr, va, epochs=epochs, run_dir=run_dir, on_epoch_end=stop, **SETTINGS)
            history, reason = res.history, res.stop_reason
        except _Killed:
            history, reason = [], "killed"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out) / f"rank{rank}.safetensors"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"history": history, "writes": writes,
                                                             "stop_reason": reason}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp: Path, root: Path, run_dir: Path | None = None, epochs: int = 2, kill_after: int = 0,
           stop_after: int = 0) -> list[dict]:
    mp.spawn(_worker, args=(_free_port(), str(root), str(tmp), str(run_dir) if run_dir else None, epochs, kill_after,
                            stop_after), nprocs=WORLD, join=True)
    return [json.loads((tmp / f"rank{r}.json").read_text()) | {"state": load_file(str(tmp / f"rank{r}.safetensors"))}
            for r in range(WORLD)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("ddp") / "data", n_per_class=12, classes=("a", "b", "c"))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "hs-cache"))


def test_shards_make_up_the_global_batch_and_validation_counts_each_image_once() -> None:
    order = np.random.default_rng(0).permutation(10)
    shards = [train_shard(order, Dist(r, 2)) for r in range(2)]
    for j in range(0, 5, 2):  # per-process batch 2 = global batch 4
        assert sorted(np.concatenate([s[j:j + 2] for s in shards])) == sorted(order[2 * j:2 * j + 4])
    padded = [train_shard(order[:7], Dist(r, 2)) for r in range(2)]
    assert [len(s) for s in padded] == [4, 4] and set(np.concatenate(padded)) == set(order[:7])  # padded by one
    assert sorted(np.concatenate([deal(7, Dist(r, 3)) for r in range(3)])) == list(range(7))


def test_two_processes_train_as_one_with_the_same_global_batch(root: Path, tmp_path: Path) -> None:
    ranks = _spawn(tmp_path, root, run_dir=tmp_path / "ddp-run")
    for k, v in ranks[0]["state"].items():  # DDP keeps the processes identical
        torch.testing.assert_close(ranks[1]["state"][k], v, atol=0, rtol=0, msg=k)

    tr, va = _sets(root)
    model = _model()
    one = train(model, tr, va, epochs=2, **SETTINGS)  # one process, batch 8: the same global batch
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][k], v, atol=1e-5, rtol=1e-4, msg=k)
    # Validation of 7 images over 2 processes: each counted once, as in one process.
    for key in ("val_loss", "val_acc", "train_loss", "train_acc"):
        assert [h[key] for h in ranks[0]["history"]] == pytest.approx([h[key] for h in one.history], abs=1e-5)
    assert [{**h, "seconds": 0} for h in ranks[0]["history"]] == [{**h, "seconds": 0} for h in ranks[1]["history"]]
    moved = ~torch.isclose(ranks[0]["state"]["classifier.weight"], _model().state_dict()["classifier.weight"])
    assert moved.any()  # it trained

    # Only rank 0 wrote into the run directory.
    assert ranks[1]["writes"] == []
    assert any("curves.jsonl" in w for w in ranks[0]["writes"]) and any("state.json" in w for w in ranks[0]["writes"])


def test_a_two_process_checkpoint_resumes_in_one_process(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _spawn(tmp_path, root, run_dir=run, epochs=3, kill_after=2)  # both processes stop after epoch 2's checkpoint
    assert json.loads((run / "checkpoints" / "last" / "state.json").read_text())["epoch"] == 2

    tr, va = _sets(root)
    resumed = _model()
    res = train(resumed, tr, va, epochs=3, run_dir=run, resume=True, **SETTINGS)
    straight = _model()
    ref = train(straight, tr, va, epochs=3, **SETTINGS)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, atol=1e-5, rtol=1e-4, msg=k)
    assert [h["val_loss"] for h in res.history] == pytest.approx([h["val_loss"] for h in ref.history], abs=1e-5)


def _agree_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))
    from headstart.train.distributed import current, joined, same_everywhere

    with joined("cpu"):
        d = current()
        answers = [same_everywhere([24, 7], d), same_everywhere([24 - rank, 7], d)]  # rank 1 decoded one fewer
    (Path(out) / f"agree{rank}.json").write_text(json.dumps(answers))


def test_every_process_learns_that_they_disagree(tmp_path: Path) -> None:
    """What stops a job whose processes decoded different numbers of images, all at once, before training."""
    mp.spawn(_agree_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    assert [json.loads((tmp_path / f"agree{r}.json").read_text()) for r in range(WORLD)] == [[True, False]] * 2


def test_rank_zeros_stop_decision_stops_every_process(root: Path, tmp_path: Path) -> None:
    ranks = _spawn(tmp_path, root, epochs=4, stop_after=2)  # returns instead of hanging in a collective
    assert [len(r["history"]) for r in ranks] == [2, 2]
    assert [r["stop_reason"] for r in ranks] == ["budget spent", "budget spent"]


def test_torchrun_fit_writes_one_run(root: Path, tmp_path: Path) -> None:
    """The README's command on the tiny backbone: two processes, one run directory, one summary."""
    env = {**os.environ, "HEADSTART_CACHE": str(tmp_path / "hs-cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "headstart",
           "fit", str(root), "--strategy", "finetune", "--model", "tiny_test", "--epochs", "2", "--batch-size", "8",
           "--out", str(tmp_path / "R")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "R" / "metrics.json").read_text())
    assert metrics["training"]["processes"] == 2 and metrics["training"]["process_group"] == "gloo"
    assert metrics["training"]["epochs_run"] == 2
    assert (tmp_path / "R" / "run.json").is_file()  # sealed: a complete run
    assert proc.stdout.count("TEST accuracy") == 1  # one summary: rank 0's

    linear = subprocess.run(cmd[:-2] + ["--out", str(tmp_path / "L"), "--strategy", "linear"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert linear.returncode != 0 and "under torchrun only fine-tuning runs data-parallel" in linear.stderr


def test_torchrun_needs_an_out_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from headstart.cli_fit import config_from_argv
    from headstart.errors import ConfigError

    for k, v in dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)  # as torchrun sets them
    with pytest.raises(ConfigError, match="give --out"):
        config_from_argv([str(tmp_path)])
