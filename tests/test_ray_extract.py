"""Extraction on Ray Data, on a local cluster (ray.init(num_cpus=2), started once for this module): the same codes
as the single-process path, a rerun computes nothing, and a worker killed mid-batch is replaced, its batch retried
and the cache completed."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli
from conftest import make_class_folder

from headstart.features import FeatureCache, extract_codes
from headstart.models import POOLED, create_model
from headstart.models.tiny import TinyNet

ray = pytest.importorskip("ray")  # the ray extra (make test installs it)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> object:
    ray.shutdown()  # a cluster an earlier test's `--engine ray` started in this process: start a known one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Workers unpickle the test's own backbone class by value (they cannot import this test module).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = make_class_folder(tmp_path_factory.mktemp("ray") / "data", n_per_class=20)
    (root / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return sorted(root.rglob("*.*"))


class CrashOnce(TinyNet):
    """tiny_test, except that the first process to run it dies (as a preempted or OOM-killed worker does)."""

    marker: str = ""

    def forward_taps(self, x, names):  # noqa: ANN001, ANN201
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os._exit(1)
        return super().forward_taps(x, names)


def test_ray_codes_equal_the_local_ones_and_a_rerun_computes_nothing(paths: list[Path], tmp_path: Path) -> None:
    model, taps = create_model("tiny_test"), [POOLED, "stage1"]
    local = extract_codes(paths, model, taps, cache=FeatureCache(tmp_path / "a"), progress=False, backend="torch")
    with pytest.warns(UserWarning, match="broken.jpg"):
        on_ray = extract_codes(paths, model, taps, cache=FeatureCache(tmp_path / "b"), progress=False,
                               backend="torch", batch_size=8, engine="ray")
    assert on_ray.n_computed == len(paths) - 1 and [f.path.name for f in on_ray.failures] == ["broken.jpg"]
    assert on_ray.paths == local.paths
    for t in taps:
        np.testing.assert_array_equal(on_ray.codes[t], local.codes[t])
    again = extract_codes(paths, model, taps, cache=FeatureCache(tmp_path / "b"), progress=False, engine="ray")
    assert again.n_computed == 0 and again.n_cached == len(paths) - 1


def test_a_worker_killed_mid_way_is_retried_and_the_cache_completes(paths: list[Path], tmp_path: Path) -> None:
    model = CrashOnce()
    model.marker = str(tmp_path / "crashed")
    res = extract_codes(paths, model, [POOLED], cache=FeatureCache(tmp_path / "c"), progress=False, backend="torch",
                        batch_size=8, engine="ray")
    assert Path(model.marker).exists()  # a worker did die
    assert res.n_computed == len(paths) - 1
    reference = extract_codes(paths, create_model("tiny_test"), [POOLED], cache=None, progress=False, backend="torch")
    np.testing.assert_array_equal(res.codes[POOLED], reference.codes[POOLED])
    chunks = list((tmp_path / "c").rglob("chunk-*.safetensors"))
    hashes = [h for c in chunks for h in json.loads(__import__("safetensors").safe_open(c, "np").metadata()["hashes"])]
    assert len(hashes) == len(set(hashes)) == len(paths) - 1  # the retried batch was not stored twice


def test_committing_the_same_chunk_twice_leaves_one_file(tmp_path: Path) -> None:
    """What makes a retried Ray batch harmless: a chunk is named by its content and written once."""
    from headstart.features.cache import extractor_id, extractor_meta

    model, cache = create_model("tiny_test"), FeatureCache(tmp_path)
    eid, meta = extractor_id(model, POOLED), extractor_meta(model, POOLED)
    codes = np.random.default_rng(0).standard_normal((3, model.num_features[POOLED])).astype(np.float32)
    cache.commit_chunk(eid, meta, ["h1", "h2", "h3"], codes)
    first = next((tmp_path / eid).glob("chunk-*.safetensors")).stat().st_mtime_ns
    FeatureCache(tmp_path).commit_chunk(eid, meta, ["h1", "h2", "h3"], codes)  # a retry, in another process
    (chunk,) = (tmp_path / eid).glob("chunk-*.safetensors")
    assert chunk.stat().st_mtime_ns == first  # not rewritten under a reader
    np.testing.assert_allclose(FeatureCache(tmp_path).lookup(eid, ["h2"])["h2"], codes[1], atol=1e-2)


def test_an_address_where_no_cluster_answers_is_one_line(paths: list[Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    ray.shutdown()  # so that extraction has to connect
    try:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        code, _, err = run_cli(capsys, monkeypatch, "extract", str(paths[0].parent.parent), "--out",
                               str(tmp_path / "o"), "--model", "tiny_test", "--engine", "ray", "--address",
                               f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / "c"), "-q")
        assert code == 2 and "nothing answers there" in err and len(err.strip().splitlines()) == 1
    finally:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def test_extract_command_with_engine_ray(paths: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path / "cache"))
    data = paths[0].parent.parent
    code, out, err = run_cli(capsys, monkeypatch, "extract", str(data), "--out", str(tmp_path / "ray"), "--model",
                             "tiny_test", "--engine", "ray", "--backend", "torch", "-q")
    assert code == 0, err
    assert "40 computed" in out
    code, out, err = run_cli(capsys, monkeypatch, "extract", str(data), "--out", str(tmp_path / "local"), "--model",
                             "tiny_test", "--backend", "torch", "-q")
    assert code == 0 and "40 from cache" in out  # the cache Ray filled serves the local path
    np.testing.assert_array_equal(np.load(tmp_path / "ray" / "codes_pooled.npy"),
                                  np.load(tmp_path / "local" / "codes_pooled.npy"))
