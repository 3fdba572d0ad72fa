from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from conftest import make_class_folder
from headstart.bundle import load
from headstart.config import DataConfig, EngineConfig, FinetuneConfig, FitConfig
from headstart.fit import fit
from headstart.train import ScheduleConfig


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_class_folder(tmp_path / "data", n_per_class=16, classes=("a", "b", "c"))


def _cfg(data: Path, out: Path, cache: Path, **ft: object) -> FitConfig:
    return FitConfig(out=str(out), strategy="finetune", model="tiny_test", data=DataConfig(path=str(data)),
                     engine=EngineConfig(backend="torch", cache_dir=str(cache), batch_size=8),
                     finetune=replace(FinetuneConfig(epochs=2, freeze=1, ema=0.0, tta="none"), **ft))


def test_finetune_writes_run_and_loadable_bundle(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    m = fit(_cfg(data, out, tmp_path / "cache", ema=0.9, tta="flip"), progress=False)
    assert m["strategy"] == "finetune" and m["freeze"] == 1 and m["test"]["tta"] == "flip"
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] == m["test"]["accuracy"]
    curves = [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]
    assert [c["epoch"] for c in curves] == [1, 2]
    assert m["training"]["diagnosis"]
    # The bundle reproduces the reported test predictions (TTA off both sides to compare like with like).
    m2 = fit(_cfg(data, tmp_path / "run2", tmp_path / "cache"), progress=False)
    model = load(tmp_path / "run2", backend="torch")
    files = [data / r for r, split in _split_files(tmp_path / "run2") if split == "test"]
    probs = model.predict_proba(files)
    labels = np.array([["a", "b", "c"].index(f.parent.name) for f in files])
    assert (probs.argmax(1) == labels).mean() == pytest.approx(m2["test"]["accuracy"])
    # Its weights id names the fine-tuned weights, not the pretrained ones (the codes cache keys on it).
    ids = [json.loads((run / "bundle" / "bundle.json").read_text())["weights_id"] for run in (out, tmp_path / "run2")]
    assert all(i.startswith("tiny-seed0+finetuned-") for i in ids) and ids[0] != ids[1]


def _split_files(run: Path) -> list[tuple[str, str]]:
    rec = json.loads((run / "splits.json").read_text())
    return [(path, split) for split, rows in rec["splits"].items() for path in rows["paths"]]


def test_same_seed_same_metrics(data: Path, tmp_path: Path) -> None:
    a = fit(_cfg(data, tmp_path / "a", tmp_path / "cache"), progress=False)
    b = fit(_cfg(data, tmp_path / "b", tmp_path / "cache"), progress=False)
    for m in (a, b):
        m.pop("timing")
    assert a == b


def test_resume_flag_continues_a_run(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["fit", str(data), "--strategy", "finetune", "--model", "tiny_test", "--epochs", "2", "--freeze", "1",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--backend", "torch", "-q"]
    code, stdout, err = run_cli(capsys, monkeypatch, *args)
    assert code == 0, err
    code, stdout, err = run_cli(capsys, monkeypatch, "fit", "--resume", str(out), "-q")
    assert code == 0, err
    assert len((out / "curves.jsonl").read_text().splitlines()) == 2  # nothing re-trained, nothing duplicated


def test_cli_craft_flags_reach_the_config(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    out = tmp_path / "run"
    base = ["fit", str(data), "--strategy", "finetune", "--model", "tiny_test", "--epochs", "1", "--freeze", "1",
            "--cache-dir", str(tmp_path / "cache"), "--backend", "torch", "-q"]
    code, _, err = run_cli(capsys, monkeypatch, *base, "--out", str(out), "--crop", "scale_jitter",
                           "--color-jitter", "0.2", "--pca-lighting", "0.1", "--layer-decay", "0.8", "--l1", "1e-5",
                           "--downscale", "0.3")
    assert code == 0, err
    ft = tomllib.loads((out / "config.toml").read_text())["finetune"]
    assert ft["optim"]["layer_decay"] == 0.8 and ft["optim"]["l1"] == 1e-5
    aug = ft["augment"]
    assert aug["crop"] == "scale_jitter" and aug["brightness"] == aug["contrast"] == aug["saturation"] == 0.2
    assert aug["pca_lighting"] == 0.1 and (out / "pca_lighting.json").is_file() and aug["downscale"] == 0.3
    assert "online prefix" in json.loads((out / "metrics.json").read_text())["training"]["feed"]

    # --no-augment switches off every randomisation, also those of a config file: the prefix is cached.
    code, _, err = run_cli(capsys, monkeypatch, *base, "--out", str(tmp_path / "plain"), "--config",
                           str(out / "config.toml"), "--no-augment")
    assert code == 0, err
    aug = tomllib.loads((tmp_path / "plain" / "config.toml").read_text())["finetune"]["augment"]
    assert not aug["hflip"] and aug["crop"] == "center" and aug["brightness"] == aug["pca_lighting"] == 0
    assert aug["downscale"] == 0
    assert "cached prefix" in json.loads((tmp_path / "plain" / "metrics.json").read_text())["training"]["feed"]

    code, _, err = run_cli(capsys, monkeypatch, *base, "--out", str(tmp_path / "bad"), "--crop", "zoom")
    assert code == 2 and "rrc" in err and "zoom" in err


def _bundle_state(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(next((run / "bundle").glob("*.safetensors"))))


def test_wise_ft_mixes_the_lp_ft_start_and_the_fine_tuned_weights(data: Path, tmp_path: Path) -> None:
    from headstart.models import create_model

    cache = tmp_path / "cache"
    runs = {a: tmp_path / f"wise{a}" for a in (0.0, 0.5, 1.0)}
    metrics = {a: fit(_cfg(data, run, cache, freeze=1, wise_ft=a), progress=False) for a, run in runs.items()}
    start, mid, tuned = (_bundle_state(runs[a]) for a in (0.0, 0.5, 1.0))
    pretrained = create_model("tiny_test").state_dict()
    # alpha 0 is the LP-FT start: the pretrained backbone everywhere (trained stages back where they began)...
    backbone = [k for k in pretrained if not k.startswith("classifier")]
    for k in backbone:
        np.testing.assert_allclose(start[k], pretrained[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    # ...and fine-tuning moved some of them, so the mix below is a real test.
    assert any(not np.allclose(tuned[k], start[k]) for k in backbone if start[k].dtype.kind == "f")
    for k in tuned:  # alpha 0.5: the midpoint, parameter by parameter (BN counters keep the fine-tuned value)
        want = (start[k] + tuned[k]) / 2 if tuned[k].dtype.kind == "f" else tuned[k]
        np.testing.assert_allclose(mid[k], want, rtol=1e-6, atol=1e-6, err_msg=k)
    # The val figures are those of the mixed weights, and of the fine-tuned end for comparison.
    val_files = [data / r for r, split in _split_files(runs[0.5]) if split == "val"]
    labels = np.array([["a", "b", "c"].index(f.parent.name) for f in val_files])

    def val_acc(run: Path) -> float:
        return float((load(run, backend="torch").predict_proba(val_files).argmax(1) == labels).mean())

    m = metrics[0.5]
    assert m["val"]["accuracy"] == pytest.approx(val_acc(runs[0.5]))
    assert metrics[0.0]["val"]["accuracy"] == pytest.approx(val_acc(runs[0.0]))
    assert m["wise_ft"] == {"alpha": 0.5, "val_accuracy_finetuned": pytest.approx(val_acc(runs[1.0]))}
    assert "WiSE-FT alpha 0.5" in m["val"]["protocol"] and "wise_ft" not in metrics[1.0]
    # A resumed run mixes with the start head stored in the run, not with a probe fitted anew.
    from safetensors.torch import load_file, save_file

    head_file = runs[0.5] / "wise_start_head.safetensors"
    save_file({k: v * 0 for k, v in load_file(str(head_file)).items()}, str(head_file))
    fit(_cfg(data, runs[0.5], cache, freeze=1, wise_ft=0.5), progress=False, resume=True)
    resumed = _bundle_state(runs[0.5])
    np.testing.assert_allclose(resumed["classifier.weight"], tuned["classifier.weight"] / 2, rtol=1e-6, atol=1e-6)
    for k in backbone:  # nothing re-trained: the backbone is the same mix as before
        np.testing.assert_allclose(resumed[k], mid[k], rtol=1e-6, atol=1e-6, err_msg=k)
    from headstart.evaluate.report import summary_text

    assert "WiSE-FT: weights 0.5 fine-tuned" in summary_text(m, runs[0.5])


def test_wise_ft_needs_the_probe_start(data: Path, tmp_path: Path) -> None:
    from headstart.errors import ConfigError

    with pytest.raises(ConfigError, match="head_init = probe"):
        fit(_cfg(data, tmp_path / "r", tmp_path / "cache", wise_ft=0.5, head_init="random"), progress=False)
    with pytest.raises(ConfigError, match=r"finetune.wise_ft must be >= 0 and <= 1; got 1.5"):
        fit(_cfg(data, tmp_path / "r", tmp_path / "cache", wise_ft=1.5), progress=False)


def test_finetune_without_validation_trains_on_all_and_says_so(data: Path, tmp_path: Path) -> None:
    from headstart.evaluate.report import summary_text

    cfg = _cfg(data, tmp_path / "run", tmp_path / "cache", ema=0.9, wise_ft=0.5)
    cfg = replace(cfg, data=replace(cfg.data, val_fraction=0.0))
    with pytest.warns(UserWarning, match="no validation split"):
        m = fit(cfg, progress=False)
    assert m["counts"]["val"] == 0 and m["training"]["best_epoch"] == 0 and m["training"]["epochs_run"] == 2
    assert m["val"]["accuracy"] is None and m["wise_ft"] == {"alpha": 0.5}
    assert "no validation split" in m["val"]["protocol"] and "no validation split" in m["training"]["diagnosis"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["val"]["accuracy"] is None
    text = summary_text(m, tmp_path / "run")
    assert "validation: none" in text and "last kept" in text and "nan" not in text


@pytest.mark.parametrize("options", [
    pytest.param(dict(snapshots=True, schedule=ScheduleConfig(name="sgdr", t0=1), epochs=3, ema=0.9, tta="flip"),
                 id="snapshots+ema+flip"),
    # No cycle ends before training stops (as when early stopping comes first): one member, a plain model.
    pytest.param(dict(snapshots=True, schedule=ScheduleConfig(name="sgdr", t0=5), epochs=2), id="snapshots-none"),
    pytest.param(dict(wise_ft=0.5, ema=0.9, tta="multiscale"), id="wise+ema+multiscale"),
    pytest.param(dict(tta="10crop", patience=1, epochs=3), id="10crop+early-stopping"),
])
def test_evaluate_reproduces_the_reported_test_figure(data: Path, tmp_path: Path, options: dict[str, object]) -> None:
    """`headstart evaluate RUN` gives metrics.json's test figure: same bundle, same members, same TTA."""
    from headstart.ensemble import evaluate_runs

    run = tmp_path / "run"
    m = fit(_cfg(data, run, tmp_path / "cache", **options), progress=False)
    assert m == json.loads((run / "metrics.json").read_text()) | {"timing": m["timing"]}
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    if options.get("snapshots"):
        ends = [e for e in (1, 2, 3) if e <= m["training"]["epochs_run"]] if options["epochs"] == 3 else []
        assert m["test"]["snapshots"] == max(1, len(ends)) == 1 + len(meta.get("snapshots", []))
    else:
        assert m["test"]["snapshots"] == 0 and "snapshots" not in meta
    result = evaluate_runs([run], backend="torch")  # tta: the run's own
    got = result["runs"][0]
    assert result["tta"] == got["tta"] == m["test"]["tta"] == options.get("tta", "none")
    assert got["n"] == m["test"]["n"] and got["accuracy"] == m["test"]["accuracy"]
    assert got["log_loss"] == pytest.approx(m["test"]["log_loss"], rel=1e-6, abs=1e-9)
    assert got["confusion_matrix"] == m["test"]["confusion_matrix"]
