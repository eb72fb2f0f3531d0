"""Class orders, task splits, validation carving, task datasets and the train/view transforms."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from PIL import Image

from clapray.data import (
    Benchmark,
    TaskSubset,
    build_scenario,
    chain_benchmarks,
    class_order,
    task_sizes,
    train_transform,
    view_transform,
)
from clapray.errors import UserError


class TargetsOnly:
    """A split of tiny solid images whose colour encodes the index (enough for index bookkeeping)."""

    def __init__(self, targets: np.ndarray):
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (2, 2), (index % 256, 0, 0)), int(self.targets[index])

    def fingerprint(self) -> str:
        return str(hash(self.targets.tobytes()))


def toy_benchmark(num_classes: int = 20, train_per_class: int = 10, test_per_class: int = 3,
                  name: str = "toy", **kwargs) -> Benchmark:
    rng = np.random.default_rng(num_classes)
    # Shuffled so dataset order is not class-major.
    train = rng.permutation(np.repeat(np.arange(num_classes), train_per_class))
    test = rng.permutation(np.repeat(np.arange(num_classes), test_per_class))
    return Benchmark(name=name, class_names=tuple(f"{name} class {i}" for i in range(num_classes)),
                     templates=("a {}.",), train=TargetsOnly(train), test=TargetsOnly(test), **kwargs)


def pixel_index(image: Image.Image) -> int:
    """The red value of a TargetsOnly image: its index modulo 256."""
    return image.getpixel((0, 0))[0]


# ----------------------------------------------------------------------------------------- orders


def test_official_cifar_orders() -> None:
    assert class_order(100, 0)[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert class_order(100, 10)[:10].tolist() == [59, 15, 63, 55, 52, 18, 67, 40, 76, 17]


def test_order_matches_global_seeding_and_leaves_global_state() -> None:
    state = np.random.get_state()
    ours = class_order(200, 3)
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]
    official = np.arange(200)
    np.random.seed(1993 + 3)
    np.random.shuffle(official)
    np.random.set_state(state)
    assert np.array_equal(ours, official)


def test_identity_and_segment_orders() -> None:
    assert class_order(50, 7, kind="identity").tolist() == list(range(50))
    chained = class_order(200, 0, segments=((0, 100), (100, 200)))
    assert np.array_equal(chained[:100], class_order(100, 0))
    assert np.array_equal(chained[100:], class_order(100, 0) + 100)
    with pytest.raises(UserError):
        class_order(10, 0, segments=((0, 4), (5, 10)))
    with pytest.raises(UserError):
        class_order(10, 0, kind="random")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ tasks


def test_task_sizes() -> None:
    assert task_sizes(100, num_tasks=10) == (10,) * 10
    assert task_sizes(100, classes_per_task=20) == (20,) * 5
    assert task_sizes(100, num_tasks=10, classes_per_task=10) == (10,) * 10
    assert task_sizes(100, num_tasks=6, initial_classes=50) == (50,) + (10,) * 5
    assert task_sizes(100, classes_per_task=5, initial_classes=50) == (50,) + (5,) * 10
    with pytest.raises(UserError, match="valid classes_per_task: \\[1, 2, 4, 5, 10, 20, 25, 50, 100\\]"):
        task_sizes(100, num_tasks=3)
    for bad in ({"num_tasks": 5, "classes_per_task": 10}, {"num_tasks": 0}, {"classes_per_task": 0},
                {"num_tasks": 200}, {"num_tasks": 1, "initial_classes": 50},
                {"num_tasks": 2, "initial_classes": 100}):
        with pytest.raises(UserError):
            task_sizes(100, **bad)


def test_scenario_remaps_like_the_official_code() -> None:
    bench = toy_benchmark()
    sc = build_scenario(bench, num_tasks=4, class_order_seed=2)
    order = class_order(20, 2)
    assert np.array_equal(sc.class_order, order)
    # Official: sorted_class_order = order.argsort(); targets = sorted_class_order[targets]
    assert np.array_equal(sc.train_targets, order.argsort()[bench.train.targets])
    assert np.array_equal(sc.test_targets, order.argsort()[bench.test.targets])
    assert sc.num_tasks == 4 and sc.num_classes == 20
    assert sc.classes_of_task(1).tolist() == [5, 6, 7, 8, 9]
    assert sc.seen_classes(1).tolist() == list(range(10))
    assert sc.task_of_class.tolist() == sum(([t] * 5 for t in range(4)), [])
    assert sc.class_names[0] == bench.class_names[order[0]]
    with pytest.raises(IndexError):
        sc.train_indices(4)


def test_task_indices_partition_the_splits() -> None:
    bench = toy_benchmark()
    sc = build_scenario(bench, classes_per_task=5)
    for split, get, targets in (("train", sc.train_indices, sc.train_targets),
                                ("test", sc.test_indices, sc.test_targets)):
        parts = [get(t) for t in range(sc.num_tasks)]
        everything = np.concatenate(parts)
        assert np.array_equal(np.sort(everything), np.arange(len(targets))), split
        for t, idx in enumerate(parts):
            assert np.all(np.diff(idx) > 0)  # ascending dataset order
            assert np.all(sc.task_of_class[targets[idx]] == t)
            assert set(targets[idx].tolist()) == set(sc.classes_of_task(t).tolist())
    assert len(sc.val_indices(0)) == 0
    assert not sc.train_indices(0).flags.writeable and not sc.class_order.flags.writeable


def test_default_tasks_and_identity_benchmark() -> None:
    sc = build_scenario(toy_benchmark(num_classes=50, class_order="identity", default_num_tasks=5))
    assert sc.num_tasks == 5 and sc.class_order.tolist() == list(range(50))


def test_validation_split() -> None:
    bench = toy_benchmark(train_per_class=10)
    sc = build_scenario(bench, num_tasks=4, val_fraction=0.2, class_order_seed=1)
    for t in range(sc.num_tasks):
        train, val = sc.train_indices(t), sc.val_indices(t)
        assert not set(train.tolist()) & set(val.tolist())
        counts = np.bincount(sc.train_targets[val], minlength=20)[sc.classes_of_task(t)]
        assert counts.tolist() == [2] * 5  # 20 % of 10 per class, stratified
        assert len(train) == 5 * 8
    assert sc.val_mask.sum() == 40
    # Seeded: split_seed defaults to the class-order seed; another seed carves other images.
    same = build_scenario(bench, num_tasks=4, val_fraction=0.2, class_order_seed=1, split_seed=1)
    other = build_scenario(bench, num_tasks=4, val_fraction=0.2, class_order_seed=1, split_seed=2)
    assert np.array_equal(same.val_mask, sc.val_mask) and not np.array_equal(other.val_mask, sc.val_mask)
    # Small classes: at least one validation image, always one training image left.
    tiny = build_scenario(toy_benchmark(train_per_class=2), num_tasks=4, val_fraction=0.01)
    assert all(len(tiny.val_indices(t)) == 5 and len(tiny.train_indices(t)) == 5 for t in range(4))


def test_evaluate_on_validation() -> None:
    bench = toy_benchmark()
    sc = build_scenario(bench, num_tasks=4, val_fraction=0.3, evaluate_on="val")
    assert sc.eval_split is bench.train
    assert np.array_equal(sc.eval_indices(2), sc.val_indices(2))
    assert sc.eval_targets is sc.train_targets
    assert len(sc.task_dataset(2, "eval")) == len(sc.val_indices(2))
    test_sc = build_scenario(bench, num_tasks=4)
    assert test_sc.eval_split is bench.test
    assert np.array_equal(test_sc.eval_indices(1), test_sc.test_indices(1))
    with pytest.raises(UserError, match="val_fraction > 0"):
        build_scenario(bench, num_tasks=4, evaluate_on="val")
    with pytest.raises(UserError):
        build_scenario(bench, num_tasks=4, val_fraction=1.0)


def test_chained_scenario_keeps_datasets_apart() -> None:
    a, b = toy_benchmark(20, name="a"), toy_benchmark(30, name="b")
    chained = chain_benchmarks([a, b])
    sc = build_scenario(chained, classes_per_task=10, class_order_seed=4)
    assert sc.num_tasks == 5
    assert np.array_equal(sc.class_order[:20], class_order(20, 4))
    assert np.array_equal(sc.class_order[20:], class_order(30, 4) + 20)
    assert sc.class_names[20] == b.class_names[class_order(30, 4)[0]]
    with pytest.raises(UserError, match="dataset boundary"):
        build_scenario(chained, classes_per_task=25)


def test_task_subset() -> None:
    bench = toy_benchmark()
    sc = build_scenario(bench, num_tasks=4)
    ds = sc.task_dataset(1, "train", transform=np.asarray)
    assert len(ds) == len(sc.train_indices(1))
    image, label, index = ds[3]
    assert index == sc.train_indices(1)[3]
    assert label == sc.train_targets[index] and label in sc.classes_of_task(1)
    assert isinstance(image, np.ndarray) and image[0, 0, 0] == index % 256
    assert np.array_equal(ds.targets, sc.train_targets[sc.train_indices(1)])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[3][1:] == (label, index)
    raw = TaskSubset(bench.test, sc.test_indices(0), sc.label_map)
    assert isinstance(raw[0][0], Image.Image) and pixel_index(raw[0][0]) == sc.test_indices(0)[0] % 256
    assert pickle.loads(pickle.dumps(sc)).train_indices(2).tolist() == sc.train_indices(2).tolist()


def test_scenario_build_is_vectorised() -> None:
    bench = toy_benchmark(num_classes=100, train_per_class=500, test_per_class=100)  # 50k / 10k images
    start = time.perf_counter()
    sc = build_scenario(bench, num_tasks=10, val_fraction=0.1)
    elapsed = time.perf_counter() - start
    assert sum(len(sc.train_indices(t)) + len(sc.val_indices(t)) for t in range(10)) == 50_000
    assert elapsed < 1.0, f"building a 50k-image scenario took {elapsed:.2f}s"


# ------------------------------------------------------------------------------------- transforms


def to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def clip_like_preprocess(size: int = 32):
    """The structure of open_clip's eval preprocess: Resize(bicubic), CenterCrop, RGB, ToTensor, Normalize."""
    import torchvision.transforms as T

    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        to_rgb,
        T.ToTensor(),
        T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])


def _photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (21, 47, 3), dtype=np.uint8))  # odd sizes: crop is asymmetric


def _check_transforms(preprocess) -> None:
    import torch
    import torchvision.transforms as T

    train = train_transform(preprocess)
    i = next(k for k, t in enumerate(train.transforms) if isinstance(t, T.RandomHorizontalFlip))
    # Same steps, same objects, the flip right before the (possibly subclassed) ToTensor.
    assert train.transforms[:i] + train.transforms[i + 1:] == preprocess.transforms
    assert isinstance(train.transforms[i + 1], T.ToTensor)
    assert isinstance(train.transforms[i - 2], T.CenterCrop) and isinstance(train.transforms[i - 3], T.Resize)

    img = _photo()
    plain, flipped = view_transform(preprocess, False)(img), view_transform(preprocess, True)(img)
    assert torch.equal(plain, preprocess(img))
    assert torch.equal(flipped, torch.flip(plain, dims=[-1]))
    assert not torch.equal(flipped, plain)
    # The random flip yields exactly one of the two views.
    torch.manual_seed(0)
    outs = [train(img) for _ in range(8)]
    assert all(torch.equal(o, plain) or torch.equal(o, flipped) for o in outs)
    assert any(torch.equal(o, flipped) for o in outs) and any(torch.equal(o, plain) for o in outs)
    # Picklable (DataLoader workers, Ray).
    for tf in (train, view_transform(preprocess, True)):
        clone = pickle.loads(pickle.dumps(tf))
        assert len(clone.transforms) == len(tf.transforms)
    assert torch.equal(pickle.loads(pickle.dumps(view_transform(preprocess, True)))(img), flipped)


def test_train_and_view_transforms() -> None:
    _check_transforms(clip_like_preprocess())
    with pytest.raises(ValueError, match="ToTensor"):
        import torchvision.transforms as T

        train_transform(T.Compose([T.CenterCrop(4)]))
    with pytest.raises(TypeError):
        view_transform(object(), True)


@pytest.mark.slow
def test_transforms_on_open_clip_preprocess() -> None:
    open_clip = pytest.importorskip("open_clip")
    _check_transforms(open_clip.image_transform(64, is_train=False))
