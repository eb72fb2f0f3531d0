"""The frozen-feature cache: what it holds, its key, its verification and its single build."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from clapray.config import load_run_config
from clapray.data import build_benchmark
from clapray.data.transforms import view_transform
from clapray.features import FeatureStore, cache_key, encode_benchmark, feature_fingerprint, load_or_build
from clapray.features.cache import FEATURES_NAME, MANIFEST_NAME
from clapray.model import load_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone("clapray-tiny-vit")


def _bench(seed: int = 0):
    return build_benchmark("shapes", ".", num_classes=4, train_per_class=3, test_per_class=2, image_size=16,
                           seed=seed)


def _fingerprint(bench, backbone, **changes):
    cfg = load_run_config(None, ["backbone.model=clapray-tiny-vit", "backbone.pretrained="])
    args = dict(pretrained=None, precision="fp32", benchmark=bench, preprocess=backbone.preprocess) | changes
    return feature_fingerprint(cfg, **args)


def test_features_hold_both_training_views_and_the_test_images(backbone):
    bench = _bench()
    features = encode_benchmark(backbone, bench, "k", batch_size=5)
    n_train, n_test = len(bench.train), len(bench.test)
    assert features.train.shape == (2, n_train, backbone.embed_dim)
    assert features.test.shape == (n_test, backbone.embed_dim)
    for i in (0, n_train - 1):
        image = bench.train[i][0]
        for flipped in (False, True):
            expected = backbone.encode_images(view_transform(backbone.preprocess, flipped)(image)[None])[0]
            torch.testing.assert_close(features.train[int(flipped), i], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(features.test[1], backbone.encode_images(backbone.preprocess(bench.test[1][0])[None])[0],
                               atol=1e-5, rtol=1e-4)
    # The two views differ (the shapes are not mirror-symmetric in general) and a batch gather picks them.
    assert not torch.allclose(features.train[0], features.train[1])
    picked = features.train_views(torch.tensor([2, 0]), torch.tensor([1, 0]))
    torch.testing.assert_close(picked, torch.stack([features.train[1, 2], features.train[0, 0]]))


def test_key_follows_everything_the_embeddings_depend_on(backbone, tmp_path):
    bench = _bench()
    base = cache_key(_fingerprint(bench, backbone))
    assert base == cache_key(_fingerprint(_bench(), backbone))  # stable
    assert base != cache_key(_fingerprint(_bench(seed=1), backbone))  # other images
    assert base != cache_key(_fingerprint(bench, backbone, precision="bf16"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"one")
    first = cache_key(_fingerprint(bench, backbone, pretrained=str(weights)))
    weights.write_bytes(b"two")  # same path, other content
    assert first != cache_key(_fingerprint(bench, backbone, pretrained=str(weights))) != base


def test_store_round_trip_and_corruption_is_rebuilt_not_used(backbone, tmp_path):
    bench = _bench()
    store = FeatureStore(tmp_path / "cache")
    calls = []

    def build():
        calls.append(1)
        return encode_benchmark(backbone, bench, "key1", batch_size=8)

    first, built = load_or_build(store, "key1", {"x": 1}, build)
    assert built and len(calls) == 1
    again, built = load_or_build(store, "key1", {"x": 1}, build)
    assert not built and len(calls) == 1
    torch.testing.assert_close(again.train, first.train, atol=0, rtol=0)
    torch.testing.assert_close(again.test, first.test, atol=0, rtol=0)

    # One flipped byte in the array: the checksum catches it and the entry is rebuilt.
    path = Path(store.entry("key1")) / FEATURES_NAME
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.load("key1") is None
    rebuilt, built = load_or_build(store, "key1", {"x": 1}, build)
    assert built and len(calls) == 2
    torch.testing.assert_close(rebuilt.train, first.train, atol=0, rtol=0)

    # A truncated file, and an entry whose manifest was never written, are not entries.
    path.write_bytes(path.read_bytes()[:100])
    assert store.load("key1") is None
    (Path(store.entry("key1")) / MANIFEST_NAME).unlink()
    assert store.load("key1") is None
    assert store.build_count("key1") == 2


def test_concurrent_builders_encode_once(backbone, tmp_path):
    bench = _bench()
    store = FeatureStore(tmp_path / "cache")
    calls, results = [], []

    def build():
        calls.append(1)
        return encode_benchmark(backbone, bench, "k", batch_size=8)

    threads = [threading.Thread(target=lambda: results.append(load_or_build(store, "k", {}, build)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sum(built for _, built in results) == 1
    assert store.build_count("k") == 1
    arrays = [f.to_array() for f, _ in results]
    assert all(np.array_equal(a, arrays[0]) for a in arrays)


# --------------------------------------------------------------------------------------------------
# Exactness: a run on cached embeddings makes the decisions of a run on images

TINY = ["method.variant=handcrafted", "data.shapes.num_classes=6", "data.shapes.train_per_class=6",
        "data.shapes.test_per_class=4", "data.num_tasks=3", "optim.epochs=2", "optim.batch_size=8",
        "method.mc_samples_train=3", "method.mc_samples_eval=3", "method.vga.ff_dim=64", "memory.size=2",
        "memory.policy=per_class"]


def _run(*overrides: str, **kwargs):
    from clapray.config import shipped_config_path
    from clapray.learner import ContinualLearner

    learner = ContinualLearner(load_run_config(shipped_config_path("tiny"), [*TINY, *overrides]), **kwargs)
    return learner, learner.run()


@pytest.mark.parametrize("extra", [[], ["memory.selector=herding", "method.deterministic=true"]],
                         ids=["handcrafted", "herding-w/o-VI"])
def test_cached_run_equals_the_run_on_images(extra):
    cached_learner, cached = _run(*extra)
    naive_learner, naive = _run("data.feature_cache=false", *extra)
    assert cached_learner.features is not None and naive_learner.features is None
    for a, b in zip(cached, naive, strict=False):
        np.testing.assert_allclose(a.accuracy_row, b.accuracy_row, atol=1e-6)
        assert a.losses.keys() == b.losses.keys()
        np.testing.assert_allclose([a.losses[k] for k in sorted(a.losses)], [b.losses[k] for k in sorted(b.losses)],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose([a.ece, a.last_acc, a.avg_acc], [b.ece, b.last_acc, b.avg_acc], atol=1e-5)
    assert np.array_equal(cached_learner.memory.indices(), naive_learner.memory.indices())


def test_flips_are_drawn_and_both_views_are_trained_on(monkeypatch):
    from clapray.learner import ContinualLearner

    seen = []
    original = ContinualLearner._train_batches

    def spy(self, indices, flips, batch_size):
        seen.append(np.asarray(flips).copy())
        return original(self, indices, flips, batch_size)

    monkeypatch.setattr(ContinualLearner, "_train_batches", spy)
    _run()
    flips = np.concatenate(seen)
    assert 0.3 < flips.mean() < 0.7  # RandomHorizontalFlip(p=0.5), drawn from the seeded plan


def test_only_frozen_image_towers_use_the_cache():
    from clapray.features.provide import uses_feature_cache
    from clapray.model.prompts import VARIANTS

    for name, spec in VARIANTS.items():
        cfg = load_run_config(None, [f"method.variant={name}"])
        assert uses_feature_cache(cfg) == spec.image_tower_frozen, name
        assert not uses_feature_cache(load_run_config(None, [f"method.variant={name}", "data.feature_cache=false"]))
    assert not VARIANTS["maple"].image_tower_frozen


def test_run_cli_keeps_the_cache_in_its_store_and_reuses_it(tmp_path):
    from clapray.run import main

    args = ["tiny", "--out", str(tmp_path), *sum((["--set", s] for s in TINY), [])]
    assert main(args) == 0
    entries = [p for p in (tmp_path / "feature_cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and FeatureStore(tmp_path / "feature_cache").build_count(entries[0].name) == 1
    import pandas as pd

    assert pd.read_parquet(tmp_path / "runs")["used_feature_cache"].tolist() == [True]
    # Another run of the same benchmark and backbone (another seed) loads the entry instead of encoding.
    assert main([*args, "--set", "seeds.init=3"]) == 0
    assert FeatureStore(tmp_path / "feature_cache").build_count(entries[0].name) == 1


# --------------------------------------------------------------------------------------------------
# The benchmarks


def test_bench_cache_reports_a_speedup_and_equal_metrics(capsys):
    from clapray.bench.__main__ import main

    assert main(["cache", "--backbone", "clapray-tiny-vit", "--classes", "4", "--tasks", "2",
                 "--train-per-class", "4", "--test-per-class", "2", "--epochs", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = lines[-1]
    assert last.startswith("speedup: ") and last.endswith("x, metrics equal: yes"), last
    assert float(last.split()[1].rstrip("x,")) > 0
    assert sum(line.split()[0] in ("0", "1") for line in lines) == 2  # one row per task


def test_bench_cache_rejects_bad_arguments_with_one_line(capsys):
    from clapray.bench.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "--tasks", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench cache: --tasks: expected an integer >= 1, got 0" in err[0], err


@pytest.mark.slow
def test_bench_ray_measures_the_overhead(capsys):
    from clapray.bench.__main__ import main

    assert main(["ray", "--trials", "1", "--tasks", "1", "--images", "4"]) == 0
    out = capsys.readouterr().out
    assert "plain Python" in out and "Ray sweep (1 at a time)" in out
    assert any(line.startswith("overhead: ") for line in out.splitlines())
    assert out.strip().splitlines()[-1] == "stored results equal the plain runs': yes"
