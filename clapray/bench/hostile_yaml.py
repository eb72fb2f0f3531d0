"""``python -m clapray.bench yaml``: what a hostile config file costs to refuse, against plain ``yaml.safe_load``.

Each input is loaded in a fresh interpreter, once through clapray's config loader (``load_run_config``,
i.e. :mod:`clapray.safe_yaml` and the typed config) and once through ``yaml.safe_load`` followed by the
message the config used to build (``repr`` of the value), as the loader did before its limits. Each
process is capped (``--timeout`` seconds, ``--memory-mb`` of address space) so the baseline cannot take
the machine down; a capped baseline is reported as such. Printed: the time the load took (imports
excluded) and the process's peak RSS (VmHWM, imports included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

DESCRIPTION = "cost of refusing hostile YAML (alias bombs, 50 MB): clapray's loader against yaml.safe_load"

_PROGRAM = """
import json, sys, time
kind, path = sys.argv[1], sys.argv[2]
if kind == "clapray":
    from clapray.config import load_run_config  # imports are not what is measured
    from clapray.errors import ConfigError
else:
    import yaml
start = time.perf_counter()
outcome = "accepted"
try:
    if kind == "clapray":
        try:
            load_run_config(path)
        except ConfigError as err:
            outcome = "refused: " + str(err)[-90:]
    else:
        data = yaml.safe_load(open(path, encoding="utf-8").read())
        text = repr(data)  # what the old message did with a rejected value before cutting it
        outcome = f"parsed; repr {len(text)} characters"
except MemoryError:
    outcome = "MemoryError"
hwm = [l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM:")]
print(json.dumps({"seconds": time.perf_counter() - start, "rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else None,
                  "outcome": outcome}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per process (default 60)")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address-space cap per process (default 4096)")


def _inputs(folder: Path) -> dict[str, Path]:
    def bomb(levels: int) -> str:
        lines = ["method:", "  variant:", "    a: &a [" + ", ".join(["lol"] * 9) + "]"]
        for k in range(levels):
            name, previous = chr(ord("b") + k), chr(ord("a") + k)
            lines.append(f"    {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
        return "\n".join(lines) + "\n"

    texts = {"alias bomb, 8 levels": bomb(8), "alias bomb, 9 levels": bomb(9),
             "50 MB list": "method:\n  variant: [" + "lol, " * 10_000_000 + "lol]\n"}
    paths = {}
    for i, (name, text) in enumerate(texts.items()):
        paths[name] = folder / f"input{i}.yaml"
        paths[name].write_text(text)
    return paths


def _measure(kind: str, path: Path, timeout: float, memory_mb: int) -> dict:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    try:
        out = subprocess.run([sys.executable, "-c", _PROGRAM, kind, str(path)], capture_output=True, text=True,
                             timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "rss_mb": None, "outcome": f"still running after {timeout:g} s (killed)"}
    lines = out.stdout.strip().splitlines()
    if not lines:
        return {"seconds": None, "rss_mb": None, "outcome": (out.stderr.strip().splitlines() or ["died"])[-1][:90]}
    return json.loads(lines[-1])


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="clapray-bench-yaml-") as tmp:
        inputs = _inputs(Path(tmp))
        print(f"{'loader':<16} {'seconds':>8} {'peak RSS MB':>12}  outcome")
        for name, path in inputs.items():
            print(f"{name} ({path.stat().st_size} bytes)")
            for kind, label in (("clapray", "clapray"), ("baseline", "yaml.safe_load")):
                r = _measure(kind, path, args.timeout, args.memory_mb)
                seconds = "-" if r["seconds"] is None else f"{r['seconds']:.3f}"
                rss = "-" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}"
                print(f"  {label:<14} {seconds:>8} {rss:>12}  {r['outcome']}", flush=True)
    return 0
