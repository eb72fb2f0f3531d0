"""The layer rules of the package, checked on the code itself.

* Only the sweep driver (``clapray/sweep/``), the benchmarks (``clapray/bench/``) and the report's importance
  module import Ray or Optuna: the core (config, data, model, features, learner, losses, metrics, results)
  is a plain Python object that a script, a test or a Ray worker can drive.
* The typed configuration, the sweep model and the report import no torch (they run where no GPU stack is).
* ``clapray/sweep/`` does not reach back into the run CLI, and no module imports another module's private
  names.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clapray"
HEAVY = ("ray", "optuna")
# Where Ray or Optuna may be imported (paths relative to the package).
MAY_IMPORT_RAY = ("sweep/", "bench/", "report/importance.py")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (functions included), as absolute dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def modules_loaded_by(imports: str) -> set[str]:
    code = f"import sys; {imports}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=180)
    return set(out.stdout.split())


def test_only_the_sweep_the_benchmarks_and_importance_import_ray_or_optuna():
    offenders = []
    for path in package_files():
        relative = path.relative_to(PACKAGE).as_posix()
        heavy = {m for m in imported_modules(path) if m.split(".")[0] in HEAVY}
        if heavy and not relative.startswith(MAY_IMPORT_RAY):
            offenders.append(f"{relative}: {', '.join(sorted(heavy))}")
    assert not offenders, offenders


def test_the_core_loads_neither_ray_nor_optuna():
    loaded = modules_loaded_by("import clapray.learner, clapray.features, clapray.results, clapray.data, "
                               "clapray.model, clapray.metrics, clapray.run, clapray.sweep, clapray.report")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


@pytest.mark.parametrize("module", ["clapray.config", "clapray.sweep", "clapray.report",
                                    "clapray.model.prompts.catalog"])
def test_configuration_sweep_model_and_report_load_no_torch(module):
    loaded = modules_loaded_by(f"import {module}")
    assert "torch" not in loaded and not loaded & set(HEAVY)


def test_the_sweep_does_not_reach_back_into_the_run_cli():
    for path in (PACKAGE / "sweep").glob("*.py"):
        assert "clapray.run" not in imported_modules(path), path.name


def test_no_module_imports_a_private_name_of_another():
    offenders = []
    for path in package_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clapray"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {node.module}.{', '.join(private)}")
    assert not offenders, offenders


def test_the_scan_sees_imports_inside_functions(tmp_path):
    # The scan must not be fooled by a lazy import: the rule is about what a module can load at all.
    probe = tmp_path / "probe.py"
    probe.write_text("def later():\n    import ray.tune\n    from optuna import samplers\n")
    assert {"ray.tune", "optuna"} <= imported_modules(probe)
