"""Every bad input the CLIs can be given: exit 2, one line naming the file (or flag) and the field, no
traceback, nothing written, and ``--dry-run`` refusing exactly what the real command refuses.

Each case runs ``python -m clapray.run`` or ``python -m clapray.sweep`` in a fresh directory holding only its
inputs; afterwards the directory must hold nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALL = """name: probe
output_dir: out
device: cpu
backbone: {model: clapray-tiny-vit, pretrained: null}
data: {dataset: shapes, num_tasks: 2, num_workers: 0, shapes: {num_classes: 4, train_per_class: 4, test_per_class: 2}}
method: {mc_samples_train: 2, mc_samples_eval: 2, vga: {ff_dim: 32}}
optim: {epochs: 1, batch_size: 8}
seeds: {class_order: 0, init: 0}
"""
SWEEP = """name: probe
base: small.yaml
seeds: [0]
storage: store
scheduler: none
resources: {workers_per_trial: 1, cpus_per_worker: 1}
retries: 0
"""
BIG = 2**70


def bomb(levels: int) -> str:
    lines = ["method:", "  variant:", "    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(levels):
        name, previous = chr(ord("b") + k), chr(ord("a") + k)
        lines.append(f"    {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Case:
    cli: str  # run or sweep
    args: tuple[str, ...]
    expected: str  # the start of the one line, after "error: "
    files: dict[str, bytes] = field(default_factory=dict)
    both_modes: bool = True  # also run without --dry-run (must print the same line)


CASES = {
    "config not UTF-8": Case("run", ("bad.yaml",), "bad.yaml: line 1: expected UTF-8 text",
                             {"bad.yaml": b"name: caf\xe9\n"}),
    "sweep not UTF-8": Case("sweep", ("bad.yaml",), "bad.yaml: line 1: expected UTF-8 text",
                            {"bad.yaml": b"name: probe\xff\nbase: small.yaml\n"}),
    "--out is a file": Case("run", ("small.yaml", "--out", "afile"), "--out: expected a directory",
                            {"afile": b"x"}),
    "--out empty": Case("run", ("small.yaml", "--out", ""), "--out: expected a directory path, got an empty one"),
    "output_dir empty": Case("run", ("small.yaml", "--set", "output_dir=''"), "--set: output_dir: expected"),
    "--storage is a file": Case("sweep", ("sweep.yaml", "--storage", "afile"), "--storage: expected a directory",
                                {"afile": b"x"}),
    "--storage empty": Case("sweep", ("sweep.yaml", "--storage", ""), "--storage: expected a local path"),
    "seeds.class_order 2**70": Case("run", ("small.yaml", "--set", f"seeds.class_order={BIG}"),
                                    "--set: seeds.class_order: expected an integer >= 0 and <= 2147483647"),
    "seeds.init 2**70": Case("run", ("small.yaml", "--set", f"seeds.init={BIG}"), "--set: seeds.init: expected"),
    "sweep seeds [2**70]": Case("sweep", ("sweep.yaml", "--set", f"seeds=[{BIG}]"), "--set: seeds: expected"),
    "sweep set.seeds.init 2**70": Case("sweep", ("sweep.yaml", "--set", f"set.seeds.init={BIG}"),
                                       "--set: set.seeds.init: expected"),
    "search.seed 2**40": Case("sweep", ("sweep.yaml", "--set", f"search.seed={2**40}"), "--set: search.seed"),
    "name of 300 characters": Case("run", ("small.yaml", "--set", "name=" + "n" * 300), "--set: name: expected"),
    "name not a directory name": Case("run", ("small.yaml", "--set", "name=a=b"), "small.yaml: name: expected"),
    "mc_samples_train 10**9": Case("run", ("small.yaml", "--set", "method.mc_samples_train=1000000000"),
                                   "--set: method.mc_samples_train: expected an integer >= 1 and <= 1000"),
    "lr .inf": Case("run", ("small.yaml", "--set", "optim.lr=.inf"), "--set: optim.lr: expected a finite number"),
    "duplicate key": Case("run", ("dup.yaml",), "dup.yaml: line 9: expected YAML within clapray's limits, got the "
                          "key 'optim' a second time", {"dup.yaml": (SMALL + "optim: {epochs: 3}\n").encode()}),
    "sweep duplicate key": Case("sweep", ("dup.yaml",), "dup.yaml: line 8:",
                                {"dup.yaml": (SWEEP + "retries: 1\n").encode()}),
    "alias bomb": Case("run", ("bomb.yaml",), "bomb.yaml: line 1: expected YAML within clapray's limits",
                       {"bomb.yaml": bomb(9).encode()}),
    "50 MB file": Case("run", ("big.yaml",), "big.yaml: <file>: expected a YAML file of at most 1 MiB",
                       {"big.yaml": b"name: probe\n" + b"#" * (50 << 20)}),
    "num_tasks > classes": Case("run", ("small.yaml", "--set", "data.num_tasks=5"),
                                "small.yaml: data.num_tasks: expected at most 4"),
    "unknown dataset": Case("run", ("small.yaml", "--set", "data.dataset=cifar1000"),
                            "small.yaml: data.dataset: expected a registered dataset"),
    "classes_per_task not dividing": Case("run", ("small.yaml", "--set", "data.num_tasks=null", "--set",
                                                  "data.classes_per_task=3"), "small.yaml: data.classes_per_task"),
    "unknown model": Case("run", ("small.yaml", "--set", "backbone.model=ViT-Q-99"),
                          "small.yaml: backbone.model: unknown backbone model"),
    "sweep num_tasks > classes": Case("sweep", ("sweep.yaml", "--set", "set.data.num_tasks=5"),
                                      "sweep.yaml with --set: cells[base].data.num_tasks: expected at most 4"),
    "sweep unknown dataset": Case("sweep", ("sweep.yaml", "--set", "set.data.dataset=cifar1000"),
                                  "sweep.yaml with --set: cells[base].data.dataset"),
    "sweep unknown model": Case("sweep", ("sweep.yaml", "--set", "set.backbone.model=ViT-Q-99"),
                                "sweep.yaml: cells[base]: backbone.model: unknown backbone model"),
    "sweep cpus_per_worker 64": Case("sweep", ("sweep.yaml", "--set", "resources.cpus_per_worker=64"),
                                     "resources: one Ray Train worker needs 64 CPU on one node"),
}


def run_cli(case: Case, tmp_path: Path, dry_run: bool) -> subprocess.CompletedProcess:
    for name, data in {"small.yaml": SMALL.encode(), "sweep.yaml": SWEEP.encode(), **case.files}.items():
        (tmp_path / name).write_bytes(data)
    args = [*case.args, "--dry-run"] if dry_run else list(case.args)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"clapray.{case.cli}", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path):
    case = CASES[name]
    lines = {}
    inputs = {tmp_path / n for n in ("small.yaml", "sweep.yaml", *case.files)}
    for dry_run in (True, False) if case.both_modes else (True,):
        proc = run_cli(case, tmp_path, dry_run)
        assert proc.returncode == 2, (dry_run, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr + proc.stdout
        errors = proc.stderr.strip().splitlines()
        assert len(errors) == 1, errors
        assert errors[0].startswith(f"error: {case.expected}"), errors[0]
        assert len(errors[0]) < 600
        assert set(tmp_path.rglob("*")) == inputs, "something was written"
        lines[dry_run] = errors[0]
    assert len(set(lines.values())) == 1, f"--dry-run and the real command disagree: {lines}"


def test_a_valid_config_passes_the_dry_run(tmp_path):
    for cli, target in (("run", "small.yaml"), ("sweep", "sweep.yaml")):
        proc = run_cli(Case(cli, (target,), ""), tmp_path, dry_run=True)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["small.yaml", "sweep.yaml"]


def test_a_closed_output_pipe_ends_quietly(tmp_path):
    """`python -m clapray.run --fields | head -1`: the reader goes away; no traceback, the shell's 141."""
    import fcntl

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)  # smaller than the ~18 kB it prints
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "clapray.run", "--fields"], stdout=write_end,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.readline()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
