"""Benchmarks, class-incremental scenarios and transforms.

Importing this package registers every benchmark builder (``cifar100``, ``imagenet100``, ``imagenet_r``,
``cub200``, ``vtab``, ``cdcl``, ``shapes``, ``shapes_cl``). It imports neither torch/torchvision nor
Ray/Optuna; the transform helpers import torchvision when called.
"""

import clapray.shapes.benchmark  # noqa: F401  (registers shapes and shapes_cl)
from clapray.data import chain, cifar, folders  # noqa: F401  (registration side effects)
from clapray.data.base import (
    Benchmark,
    BenchmarkShape,
    LabeledImages,
    benchmark_shape,
    build_benchmark,
    get_benchmark_builder,
    list_benchmarks,
    register_benchmark,
)
from clapray.data.chain import chain_benchmarks
from clapray.data.scenario import (
    ClassIncrementalScenario,
    TaskSplitError,
    TaskSubset,
    build_scenario,
    class_order,
    plan_tasks,
    task_sizes,
)
from clapray.data.transforms import HorizontalFlip, train_transform, view_transform

__all__ = [
    "Benchmark",
    "BenchmarkShape",
    "TaskSplitError",
    "benchmark_shape",
    "plan_tasks",
    "ClassIncrementalScenario",
    "HorizontalFlip",
    "LabeledImages",
    "TaskSubset",
    "build_benchmark",
    "build_scenario",
    "chain_benchmarks",
    "class_order",
    "get_benchmark_builder",
    "list_benchmarks",
    "register_benchmark",
    "task_sizes",
    "train_transform",
    "view_transform",
]
