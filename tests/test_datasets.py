"""Benchmarks on fake data in the real on-disk formats, chains and package data."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest_data import (
    FAKE_DATA,
    JPEG,
    cifar_pattern,
    write_cifar_file,
    write_fake_cifar,
    write_fake_imagenet100,
    write_fake_imagenet_r,
    write_fake_vtab,
)
from PIL import Image

import clapray.data as data
from clapray.data import build_benchmark, chain_benchmarks, list_benchmarks
from clapray.data.base import Benchmark
from clapray.data.templates import class_names, imagenet100_wnids, imagenet_templates, read_package_text
from clapray.errors import DatasetNotFoundError, UserError


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------- every benchmark


@pytest.mark.parametrize("name", list_benchmarks())
def test_every_benchmark_builds(name: str, tmp_path: Path) -> None:
    if name not in FAKE_DATA:
        pytest.fail(f"benchmark {name!r} is registered but tests/conftest_data.py has no fake data for it")
    fake = FAKE_DATA[name]
    options = fake.write(tmp_path)
    bench = build_benchmark(name, tmp_path, **options)

    assert isinstance(bench, Benchmark)
    assert bench.num_classes == fake.num_classes
    assert len(set(bench.class_names)) == bench.num_classes
    assert all(isinstance(n, str) and n.strip() and "_" not in n for n in bench.class_names)
    assert bench.templates and all(t.count("{}") == 1 for t in bench.templates)
    for split in (bench.train, bench.test):
        assert len(split) == len(split.targets) > 0
        assert split.targets.dtype == np.int64
        assert 0 <= split.targets.min() and split.targets.max() < bench.num_classes
    image, label = bench.train[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert label == bench.train.targets[0]
    image, label = bench.test[len(bench.test) - 1]
    assert image.mode == "RGB" and label == bench.test.targets[-1]
    assert sum(end - start for start, end in bench.segments) == bench.num_classes

    # Splits travel to workers by pickle.
    clone = pickle.loads(pickle.dumps(bench.train))
    assert np.array_equal(np.asarray(clone[0][0]), np.asarray(bench.train[0][0]))

    again = build_benchmark(name, tmp_path, **options)
    assert again.fingerprint() == bench.fingerprint()
    assert again.train.fingerprint() == bench.train.fingerprint()
    changed = build_benchmark(name, tmp_path, **fake.mutate(tmp_path, dict(options)))
    assert changed.fingerprint() != bench.fingerprint()


def test_package_data() -> None:
    assert len(imagenet100_wnids()) == 100
    assert imagenet100_wnids()[0] == "n01440764" and imagenet100_wnids()[-1] == "n01855672"
    assert list(imagenet100_wnids()) == sorted(imagenet100_wnids())
    assert class_names("imagenet100")[0] == "tench" and class_names("imagenet100")[-1] == "goose"
    assert class_names("imagenetr")[1] == "great white shark"
    assert len(class_names("cub")) == 200
    templates = imagenet_templates()
    assert len(templates) == 80 == len(set(templates))
    assert "a bad photo of a {}." in templates and "itap of my {}." in templates
    train = read_package_text("imagenetr_train.txt.gz").splitlines()
    test = read_package_text("imagenetr_test.txt.gz").splitlines()
    assert (len(train), len(test)) == (24000, 6000)
    assert train[0] == "train/n01443537/sculpture_3.jpg 0"


def test_import_stays_light() -> None:
    import subprocess

    code = ("import sys, clapray.data; "
            "heavy = [m for m in ('ray', 'optuna', 'torch', 'torchvision', 'open_clip') "
            "if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    expected = {"cifar100", "imagenet100", "imagenet_r", "cub200", "vtab", "cdcl", "shapes"}
    assert expected <= set(list_benchmarks())


# ------------------------------------------------------------------------------------------- CIFAR


def test_cifar_decodes_pixels_exactly(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    # Overwrite the test split with hand-placed plane values: first row = R plane, then G, then B.
    rows = np.zeros((100, 3072), dtype=np.uint8)
    rows[0, 0], rows[0, 1024], rows[0, 2048] = 10, 20, 30  # pixel (0, 0): R, G, B
    rows[0, 1] = 40  # R of row 0, column 1
    rows[0, 32] = 50  # R of row 1, column 0
    rows[0, 1023 + 2048] = 60  # B of row 31, column 31
    images = rows.reshape(100, 3, 32, 32).transpose(0, 2, 3, 1)
    write_cifar_file(tmp_path / "cifar-100-python" / "test", images, np.arange(100))
    bench = build_benchmark("cifar100", tmp_path)
    img, label = bench.test[0]
    px = np.asarray(img)
    assert img.size == (32, 32) and img.mode == "RGB" and label == 0
    assert tuple(px[0, 0]) == (10, 20, 30)
    assert px[0, 1, 0] == 40 and px[1, 0, 0] == 50 and px[31, 31, 2] == 60
    # The whole generated pattern round-trips.
    expected = cifar_pattern(200, seed=len("train"))
    for i in (0, 1, 199):
        assert np.array_equal(np.asarray(bench.train[i][0]), expected[i])
    assert bench.train.targets[:3].tolist() == [0, 1, 2]
    assert bench.default_memory == ("total", 2000) and bench.default_num_tasks == 10
    assert len(bench.templates) == 18 and bench.class_names[1] == "aquarium fish"


def test_cifar_split_pickles_without_pixels(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    split = build_benchmark("cifar100", tmp_path).train
    blob = pickle.dumps(split)
    assert len(blob) < split.images.nbytes // 4
    clone = pickle.loads(blob)
    assert np.array_equal(np.asarray(clone[5][0]), np.asarray(split[5][0]))
    assert clone.fingerprint() == split.fingerprint()


def test_cifar_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("cifar100", tmp_path)
    message = _one_line(err)
    assert str(tmp_path / "cifar-100-python") in message and "data.download: true" in message


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("cifar100", tmp_path)
    assert str(path) in _one_line(err)


def test_cifar_wrong_shape_and_names(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    obj[b"data"] = obj[b"data"][:, :3000]
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(DatasetNotFoundError, match=r"\[N, 3072\]"):
        build_benchmark("cifar100", tmp_path)

    write_fake_cifar(tmp_path)
    meta = tmp_path / "cifar-100-python" / "meta"
    names = [n.encode() for n in class_names("cifar224")]
    names[3], names[4] = names[4], names[3]
    with open(meta, "wb") as f:
        pickle.dump({b"fine_label_names": names}, f)
    with pytest.raises(DatasetNotFoundError, match="label 3"):
        build_benchmark("cifar100", tmp_path)


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch, cifar100: type) -> None:
    """Stand-in ``torchvision.datasets`` so the download path runs offline and without the real import."""
    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR100 = cifar100  # type: ignore[attr-defined]
    tv.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


class _OfflineCifar:
    def __init__(self, root: str, train: bool, download: bool):
        raise RuntimeError("Error downloading cifar-100-python.tar.gz:\nURLError: no network")


class _WritingCifar:
    def __init__(self, root: str, train: bool, download: bool):
        write_fake_cifar(Path(root))


def test_cifar_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torchvision(monkeypatch, _OfflineCifar)
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("cifar100", tmp_path, download=True)
    assert "download" in _one_line(err) and str(tmp_path) in str(err.value)

    _fake_torchvision(monkeypatch, _WritingCifar)
    assert build_benchmark("cifar100", tmp_path / "fresh", download=True).num_classes == 100


# ----------------------------------------------------------------------------------------- folders


def test_imagenet100_folder_checks(tmp_path: Path) -> None:
    write_fake_imagenet100(tmp_path)
    bench = build_benchmark("imagenet100", tmp_path)
    assert bench.class_names[0] == "tench" and len(bench.templates) == 80
    assert bench.train.targets.tolist()[:4] == [0, 0, 1, 1]
    assert bench.train.rel_paths[0] == "n01440764/img_0.JPEG"

    (tmp_path / "imagenet100" / "val" / "n01440764").rename(tmp_path / "imagenet100" / "val" / "n99999999")
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("imagenet100", tmp_path)
    assert "n99999999" in _one_line(err) and "n01440764" in str(err.value)

    (tmp_path / "imagenet100" / "val" / "n99999999").rename(tmp_path / "imagenet100" / "val" / "n01440764")
    (tmp_path / "imagenet100" / "val" / "extra").mkdir()
    with pytest.raises(DatasetNotFoundError, match="expected 100 class folders, found 101"):
        build_benchmark("imagenet100", tmp_path)


def test_missing_root_messages(tmp_path: Path) -> None:
    for name, fragment in (("imagenet100", "imagenet100"), ("imagenet_r", "imagenet-r"),
                           ("cub200", "cub"), ("vtab", "vtab")):
        with pytest.raises(DatasetNotFoundError) as err:
            build_benchmark(name, tmp_path)
        assert str(tmp_path / fragment) in _one_line(err)


@pytest.mark.parametrize("prepared", [False, True])
def test_imagenet_r_layouts(tmp_path: Path, prepared: bool) -> None:
    options = write_fake_imagenet_r(tmp_path, prepared=prepared)
    bench = build_benchmark("imagenet_r", tmp_path, **options)
    assert len(bench.train) == 6 and len(bench.test) == 3
    assert bench.train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert bench.train.rel_paths[0] == ("train/" if prepared else "") + "n01443537/sculpture_3.jpg"
    assert bench.class_names[:2] == ("goldfish", "great white shark")


def test_imagenet_r_missing_entries(tmp_path: Path) -> None:
    options = write_fake_imagenet_r(tmp_path)
    gone = tmp_path / "imagenet-r" / "n01443537" / "art_1.jpg"
    gone.unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        build_benchmark("imagenet_r", tmp_path, **options)
    message = _one_line(err)
    assert str(tmp_path) in message and "1 of 6" in message and str(gone) in message
    # With the full shipped lists almost everything is missing; the count says so.
    with pytest.raises(DatasetNotFoundError, match=r"\d+ of 24000 files of the train split"):
        build_benchmark("imagenet_r", tmp_path)


def test_imagenet_r_bad_list(tmp_path: Path) -> None:
    options = write_fake_imagenet_r(tmp_path)
    Path(options["train_list"]).write_text("train/n01443537/art_1.jpg\n")
    with pytest.raises(UserError, match=":1: expected"):
        build_benchmark("imagenet_r", tmp_path, **options)


def test_image_folder_class_mismatch(tmp_path: Path) -> None:
    write_fake_vtab(tmp_path)
    bench = build_benchmark("vtab", tmp_path)
    assert bench.class_names[:2] == ("class 0", "class 1")
    assert bench.class_order == "identity" and bench.default_num_tasks == 5
    named = build_benchmark("vtab", tmp_path, class_names=[f"name {i}" for i in range(50)])
    assert named.class_names[0] == "name 0"

    (tmp_path / "vtab" / "test" / "49_class_49").rename(tmp_path / "vtab" / "test" / "49_other")
    with pytest.raises(DatasetNotFoundError, match="class folders of train and test differ"):
        build_benchmark("vtab", tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "vtab" / "test" / "49_other")
    with pytest.raises(DatasetNotFoundError, match="expected 50 class folders, found 49"):
        build_benchmark("vtab", tmp_path)
    (tmp_path / "vtab" / "test" / "49_class_49").mkdir()
    with pytest.raises(DatasetNotFoundError, match="1 class folder\\(s\\) hold no images"):
        build_benchmark("vtab", tmp_path)


def test_listing_skips_non_images(tmp_path: Path) -> None:
    write_fake_vtab(tmp_path)
    d = tmp_path / "vtab" / "train" / "00_class_0"
    (d / "notes.txt").write_text("x")
    (d / ".hidden.png").write_bytes(JPEG)
    (d / "UPPER.JPG").write_bytes(JPEG)
    bench = build_benchmark("vtab", tmp_path)
    listed = [p for p in bench.train.rel_paths if p.startswith("00_")]
    assert listed == ["00_class_0/UPPER.JPG", "00_class_0/img_0.png"]


def test_folder_class_name() -> None:
    from clapray.data.folders import folder_class_name

    assert folder_class_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert folder_class_name("banded") == "banded"
    assert folder_class_name("12_annual_crop_land") == "annual crop land"


# ------------------------------------------------------------------------------------------- chains


def test_cdcl_chain(tmp_path: Path) -> None:
    write_fake_imagenet100(tmp_path)
    write_fake_cifar(tmp_path)
    bench = build_benchmark("cdcl", tmp_path)
    assert bench.segments == ((0, 100), (100, 200))
    assert bench.default_num_tasks == 20
    assert bench.class_names[0] == "tench" and bench.class_names[100] == "apple"
    n_in = len(bench.train.parts[0])
    image, label = bench.train[n_in]  # first CIFAR image
    assert label == 100 and image.size == (32, 32)
    assert bench.train.targets[n_in] == 100
    # The union keeps all 80 ImageNet templates first, then the CIFAR ones it lacks.
    assert len(bench.templates) == len(set(bench.templates)) > 80
    assert bench.templates[:80] == imagenet_templates()
    assert "a low contrast photo of a {}." in bench.templates

    reverse = build_benchmark("cdcl", tmp_path, sequence=("cifar100", "imagenet100"))
    assert reverse.class_names[0] == "apple" and reverse.class_names[100] == "tench"
    assert reverse.fingerprint() != bench.fingerprint()
    with pytest.raises(UserError, match="not in sequence"):
        build_benchmark("cdcl", tmp_path, dataset_options={"vtab": {}})


def test_chain_name_clash_and_indexing(tmp_path: Path) -> None:
    a = build_benchmark("shapes", tmp_path, num_classes=3, train_per_class=2, test_per_class=1, image_size=8)
    b = build_benchmark("shapes", tmp_path, num_classes=4, train_per_class=1, test_per_class=1, image_size=8)
    with pytest.warns(UserWarning, match="share 3 class name"):
        chained = chain_benchmarks([a, b], name="twice")
    assert chained.class_names[0] == f"{a.class_names[0]} (shapes 1)"
    assert chained.class_names[3] == f"{a.class_names[0]} (shapes 2)"
    assert len(set(chained.class_names)) == 7
    assert chained.class_names[6] == b.class_names[3]  # unique to b: unchanged
    assert chained.segments == ((0, 3), (3, 7))
    assert chained.train.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6]
    assert chained.train.locate(6) == (1, 0)
    assert chained.train[6][1] == 3
    with pytest.raises(IndexError):
        chained.train[10]
    nested = chain_benchmarks([chained, a])
    assert nested.segments == ((0, 3), (3, 7), (7, 10))
    with pytest.raises(UserError):
        chain_benchmarks([a])


def test_data_package_exports() -> None:
    for name in ("build_benchmark", "list_benchmarks", "build_scenario", "ClassIncrementalScenario",
                 "class_order", "TaskSubset", "train_transform", "view_transform"):
        assert hasattr(data, name)
