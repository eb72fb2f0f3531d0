"""One validation pass (clapray.validation): the registry's shapes, the run's semantic rules, weights files,
output and storage locations."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest_data import FAKE_DATA

from clapray.config import load_run_config, resolve_config_argument, shipped_config_path
from clapray.data import BenchmarkShape, benchmark_shape, build_benchmark, build_scenario, list_benchmarks
from clapray.errors import ConfigError, UserError
from clapray.validation import (
    benchmark_request,
    check_output_dir,
    check_run,
    check_storage,
    check_weights,
    task_count,
)

SMALL = ["data.shapes.num_classes=12", "data.num_tasks=3"]


def cfg_with(*overrides: str):
    return load_run_config(shipped_config_path("tiny"), [*SMALL, *overrides])


def refused(*overrides: str) -> str:
    with pytest.raises(UserError) as info:
        check_run(cfg_with(*overrides), "q.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("q.yaml: ")
    return message


# --------------------------------------------------------------------------------------------------
# Shapes: the task arithmetic without the data


@pytest.mark.parametrize("name", list_benchmarks())
def test_every_registered_shape_matches_the_built_benchmark(name, tmp_path):
    """The dry run decides from the shape; the run from the built benchmark: they must agree."""
    options = FAKE_DATA[name].write(tmp_path)
    built = build_benchmark(name, tmp_path, **options)
    shape = benchmark_shape(name, **options)
    assert shape is not None, f"{name} registers no shape: its task arithmetic is only checked by the run"
    assert (shape.num_classes, shape.default_num_tasks, shape.segments) == (
        built.num_classes, built.default_num_tasks, built.segments)


def test_task_count_needs_no_data():
    cfg = load_run_config(resolve_config_argument("cifar100"), ["data.root=/nonexistent", "data.num_tasks=20"])
    assert task_count(cfg) == 20
    assert task_count(load_run_config(resolve_config_argument("cdcl"), ["data.root=/nonexistent"])) == 20


@pytest.mark.parametrize("overrides, field, fragment", [
    (["data.num_tasks=13"], "data.num_tasks", "at most 12 (one class per task"),
    (["data.num_tasks=5"], "data.num_tasks", "valid classes_per_task: [1, 2, 3, 4, 6, 12]"),
    (["data.num_tasks=null", "data.classes_per_task=5"], "data.classes_per_task", "a divisor of the 12 classes"),
    (["data.num_tasks=3", "data.classes_per_task=3"], "data.num_tasks", "4 (the 12 classes in tasks of 3)"),
    (["data.initial_classes=12"], "data.initial_classes", "[1, 11]"),
    (["data.initial_classes=6", "data.num_tasks=5"], "data.num_tasks", "after the first task's 6"),
    (["data.dataset=cifar1000"], "data.dataset", "a registered dataset"),
    (["data.dataset=shapes_cl", "data.shapes.num_classes=61"], "data.shapes.num_classes", "[2, 60]"),
    (["data.sequence=[cifar100]"], "data.sequence", "unless data.dataset is cdcl"),
    (["data.dataset=cdcl", "data.sequence=[cifar100, nope]"], "data.sequence", "registered datasets other"),
    (["data.dataset=cdcl", "data.sequence=[cifar100, vtab]", "data.num_tasks=null",
      "data.classes_per_task=40"], "data.classes_per_task", "divisor of the 150"),
    (["data.dataset=cdcl", "data.sequence=[cifar100, vtab]", "data.num_tasks=null",
      "data.classes_per_task=30"], "data.classes_per_task", "cross segment [0, 100)"),
    (["method.vga.heads=5"], "method.vga.heads", "a divisor of the embedding dim 64"),
    (["method.prior=data_driven", "method.vga.enabled=false"], "method.prior", "vga.enabled"),
    (["method.prior=data_driven", "method.variant=cocoop"], "method.prior", "per image"),
    (["backbone.pretrained=clapray-shapes"], "backbone.pretrained", "only with backbone.model clapray-mini-resnet or"),
])
def test_semantic_rules_name_the_field(overrides, field, fragment):
    message = refused(*overrides)
    assert message.startswith(f"q.yaml: {field}: expected"), message
    assert fragment in message, message


def test_chained_boundaries_and_unknown_models():
    assert "cross segment [0, 100)" in refused("data.dataset=cdcl", "data.num_tasks=null", "data.classes_per_task=60",
                                               "data.sequence=[cifar100, imagenet_r]")
    message = refused("backbone.model=ViT-Q-99")
    assert message.startswith("q.yaml: backbone.model: unknown backbone model 'ViT-Q-99'")
    assert "maple" in refused("method.variant=maple", "backbone.model=RN50")


def test_what_the_checks_accept_builds(tmp_path):
    """Every config check_run accepts here builds its scenario: the rules are not stricter than the run's."""
    for overrides in (["data.num_tasks=null", "data.classes_per_task=4"], ["data.initial_classes=6",
                      "data.num_tasks=4"], ["data.num_tasks=12"], ["method.variant=zeroshot", "method.vga.heads=5"]):
        cfg = cfg_with(*overrides)
        check_run(cfg, "q.yaml")
        name, options = benchmark_request(cfg)
        bench = build_benchmark(name, tmp_path, **options)
        scenario = build_scenario(bench, num_tasks=cfg.data.num_tasks, classes_per_task=cfg.data.classes_per_task,
                                  initial_classes=cfg.data.initial_classes)
        assert scenario.num_tasks == task_count(cfg)


def test_shape_of_an_unshaped_benchmark_is_none():
    assert BenchmarkShape(10, 2).segments == ((0, 10),)


# --------------------------------------------------------------------------------------------------
# Weights: tags and checkpoint files, told apart without loading anything


def test_pretrained_file_must_look_like_a_checkpoint(tmp_path):
    notes = tmp_path / "notes.pt"
    notes.write_text("just some notes\n")
    with pytest.raises(UserError, match=r"q\.yaml: backbone\.pretrained: pretrained checkpoint .*notes\.pt is not "
                       r"a checkpoint"):
        check_weights(cfg_with(f"backbone.pretrained={notes}"), "q.yaml")
    real = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, real)
    check_weights(cfg_with(f"backbone.pretrained={real}"), "q.yaml")  # the file's contents are the run's concern
    with pytest.raises(UserError, match="checkpoint file not found"):
        check_weights(cfg_with(f"backbone.pretrained={tmp_path / 'missing.pt'}"), "q.yaml")
    check_weights(cfg_with(f"backbone.pretrained={tmp_path / 'missing.pt'}"), "q.yaml", local_files=False)


def test_pretrained_tags_are_checked_against_the_model():
    check_weights(cfg_with("backbone.model=ViT-B-16", "backbone.pretrained=openai"), "q.yaml")
    with pytest.raises(UserError, match="unknown pretrained tag 'opnai' for ViT-B-16"):
        check_weights(cfg_with("backbone.model=ViT-B-16", "backbone.pretrained=opnai"), "q.yaml")


# --------------------------------------------------------------------------------------------------
# Where results go


def make_unwritable(path: Path) -> None:
    """A directory this process cannot write into, even as root (immutable flag)."""
    path.mkdir()
    if os.geteuid() == 0:
        if os.system(f"chattr +i '{path}' 2>/dev/null") != 0:
            pytest.skip("running as root without chattr: cannot make a directory unwritable")
    else:
        path.chmod(0o555)


def release(path: Path) -> None:
    if os.geteuid() == 0:
        os.system(f"chattr -i '{path}' 2>/dev/null")
    else:
        path.chmod(0o755)


def test_output_dir_checks(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"), "--out")  # creatable
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^--out: expected a directory .* which is a file$"):
        check_output_dir(str(tmp_path / "file"), "--out")
    with pytest.raises(UserError, match=r"inside .*file, which is a file"):
        check_output_dir(str(tmp_path / "file" / "sub"), "--out")
    with pytest.raises(UserError, match="an empty one"):
        check_output_dir("", "--out")
    locked = tmp_path / "locked"
    make_unwritable(locked)
    try:
        with pytest.raises(UserError, match="which is not writable"):
            check_output_dir(str(locked / "out"), "--out")
    finally:
        release(locked)
    assert list(tmp_path.iterdir()) == [tmp_path / "file", locked]  # the checks created nothing


def test_unreachable_object_store_is_refused_quickly(monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"^--storage: expected a reachable object store, got s3://no-such/x"):
        check_storage("s3://no-such/x", "--storage", timeout_s=3)
    assert time.perf_counter() - start < 30  # generous: the deadline is 3 s


def test_silent_object_store_times_out(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections and never answers
    try:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
                           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(UserError, match="did not answer within 2 s"):
            check_storage("s3://silent/x", "--storage", timeout_s=2)
    finally:
        server.close()


def test_object_store_checks_against_moto(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="test",
                          secret_key="test", region="us-east-1", allow_bucket_creation=True).create_dir("results")
        check_storage("s3://results/sweeps", "--storage")  # reachable: nothing written
        with pytest.raises(UserError, match="bucket missing does not exist"):
            check_storage("s3://missing/sweeps", "--storage")
    finally:
        server.stop()


def test_config_errors_have_the_shape_the_cli_prints():
    err = ConfigError("q.yaml", "data.num_tasks", "at most 4", 5)
    assert str(err) == "q.yaml: data.num_tasks: expected at most 4, got 5"
