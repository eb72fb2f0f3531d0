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
