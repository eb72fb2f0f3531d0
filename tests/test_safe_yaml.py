"""The YAML loader's limits (clapray.safe_yaml) and bounded error messages (clapray.errors.describe_value)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clapray.config import load_run_config
from clapray.errors import ConfigError, describe_value
from clapray.safe_yaml import MAX_ALIASES, MAX_DEPTH, MAX_NODES, MAX_YAML_BYTES, load_yaml_text, read_yaml_file
from clapray.typed_config import parse_override

ROOT = Path(__file__).resolve().parents[1]


def alias_bomb(levels: int, width: int = 9) -> str:
    """The "billion laughs" under method.variant: level k holds ``width`` aliases of level k - 1."""
    lines = ["method:", "  variant:", "    a: &a [" + ", ".join(["lol"] * width) + "]"]
    for k in range(levels):
        name, previous = chr(ord("b") + k), chr(ord("a") + k)
        lines.append(f"    {name}: &{name} [" + ", ".join([f"*{previous}"] * width) + "]")
    return "\n".join(lines) + "\n"


def error_of(tmp_path: Path, data: bytes | str, name: str = "run.yaml") -> ConfigError:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert "\n" not in str(info.value)
    return info.value


def test_plain_files_load_as_before(tmp_path):
    (tmp_path / "ok.yaml").write_text("optim:\n  epochs: 3\nmemory: {policy: total, size: 10}\n")
    cfg = load_run_config(tmp_path / "ok.yaml")
    assert cfg.optim.epochs == 3 and cfg.memory.size == 10
    # A byte-order mark is UTF-8 too; anchors and merge keys within the budget are fine.
    (tmp_path / "bom.yaml").write_bytes("\ufeffoptim:\n  epochs: 2\n".encode())
    assert load_run_config(tmp_path / "bom.yaml").optim.epochs == 2
    merged = load_yaml_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\n", "m.yaml")
    assert merged["other"] == {"x": 1, "y": 3}


def test_not_utf8(tmp_path):
    err = error_of(tmp_path, b"name: ok\nmethod:\n  variant: caf\xe9\n")
    assert str(err) == (f"{tmp_path / 'run.yaml'}: line 3: expected UTF-8 text, got the byte 0xe9, which is not "
                        "UTF-8 here")


@pytest.mark.parametrize("text, line, key", [
    ("optim:\n  epochs: 1\nmemory: {}\noptim:\n  epochs: 3\n", 4, "optim"),  # a whole block replaced
    ("optim:\n  epochs: 1\n  epochs: 3\n", 3, "epochs"),
    ("method:\n  vga: {depth: 1, depth: 2}\n", 2, "depth"),
])
def test_duplicate_keys_at_any_depth(tmp_path, text, line, key):
    err = error_of(tmp_path, text)
    assert err.field == f"line {line}" and f"the key '{key}' a second time" in str(err)


def test_duplicate_key_in_a_sweep(tmp_path):
    from clapray.sweep import load_sweep_config

    path = tmp_path / "s.yaml"
    path.write_text("name: s\nbase: tiny\nretries: 0\nretries: 1\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: line 4: .*'retries' a second time"):
        load_sweep_config(path)


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    err = error_of(tmp_path, alias_bomb(8))  # 550 bytes that expand to 387 million strings
    assert f"more than {MAX_NODES} nodes" in str(err) and len(str(err)) < 300


def test_too_many_aliases(tmp_path):
    text = "a: &a x\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    assert f"more than {MAX_ALIASES} aliases" in str(error_of(tmp_path, text))


def test_recursive_alias(tmp_path):
    assert "recursive alias" in str(error_of(tmp_path, "method:\n  variant: &a [*a]\n"))


def test_nesting_and_huge_integers(tmp_path):
    deep = "name: " + "[" * 100_000 + "]" * 100_000 + "\n"
    assert f"more than {MAX_DEPTH} deep" in str(error_of(tmp_path, deep))
    err = error_of(tmp_path, "seeds:\n  init: " + "9" * 5000 + "\n")
    assert "too long to be a number" in str(err)


def test_size_limit_reads_no_further(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"name: x\n" + b"#" * MAX_YAML_BYTES)
    with pytest.raises(ConfigError, match="at most 1 MiB, got a larger file"):
        read_yaml_file(path)


def test_override_values_obey_the_same_limits():
    bomb = "[&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&{chr(98 + k)} [" + ",".join([f"*{chr(97 + k)}"] * 9) + "]" for k in range(7)) + "]"
    with pytest.raises(ConfigError, match=r"--set: method\.variant: expected YAML within clapray's limits"):
        parse_override(f"method.variant={bomb}")
    assert parse_override("method.variant=[unclosed") == (["method", "variant"], "[unclosed")  # text, as before


def test_error_messages_never_print_a_value_whole():
    nested: list = ["x"] * 9
    for _ in range(9):
        nested = [nested] * 9  # 387 million strings if repr() walked it
    assert len(describe_value(nested)) < 80
    assert describe_value(2**70) == "1180591620717411303424"
    assert describe_value(10**6000) == "an integer of about 6001 digits"  # repr() itself refuses this one
    assert len(describe_value("y" * 10**6)) < 80


BENCH = textwrap.dedent("""
    import json, resource, sys, time
    from clapray.errors import ConfigError
    from clapray.config import load_run_config
    start = time.perf_counter()
    try:
        load_run_config(sys.argv[1])
        outcome = "accepted"
    except ConfigError as err:
        outcome = str(err)
    seconds = time.perf_counter() - start
    # Peak RSS of this program: VmHWM restarts at exec, whereas getrusage's ru_maxrss also counts the pages
    # of the parent (pytest, with torch loaded) that this process was forked from.
    status = open("/proc/self/status").read()
    hwm = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    rss_mb = (int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss_mb, "outcome": outcome}))
""")


@pytest.mark.parametrize("name", ["alias_bomb_9_levels", "fifty_megabytes"])
def test_hostile_files_cost_little(tmp_path, name):
    """Generous bounds (the shared test machine is noisy); `python -m clapray.bench yaml` prints the
    numbers. Before the limits the 9-level bomb needed >3 GB (MemoryError) and the 50 MB file minutes."""
    path = tmp_path / f"{name}.yaml"
    if name == "fifty_megabytes":
        path.write_text("method:\n  variant: [" + "lol, " * 10_000_000 + "lol]\n")
    else:
        path.write_text(alias_bomb(9))
    out = subprocess.run([sys.executable, "-c", BENCH, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["outcome"] != "accepted"
    assert result["seconds"] < 5.0, result
    assert result["rss_mb"] < 200, result  # the interpreter and the config modules alone take about 40
