"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """The test machine's cores are shared; one intra-op thread is faster and steadier there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------
# The pretrained mini-CLIP and the method-quality summary (the slow tier)


@pytest.fixture(scope="session")
def mini_clip_cache(request) -> str:
    """A directory whose ``mini-clip/`` holds the default mini-CLIP checkpoint, pretrained once.

    It lives in pytest's own cache (``.pytest_cache``), so the few minutes of pretraining are paid once
    per checkout, not once per session; ``backbone.cache_dir`` set to it makes runs find the checkpoint.
    """
    from pathlib import Path

    from clapray.shapes.mini_clip import ensure_mini_clip

    root = Path(request.config.cache.mkdir("clapray"))
    before = torch.get_num_threads()
    try:
        ensure_mini_clip(root / "mini-clip", threads=2)
    finally:
        torch.set_num_threads(before)
    return str(root)


QUALITY_ROWS: list[tuple[str, str]] = []
"""(what, measured) lines the method-quality tests record; printed at the end of the session."""


def pytest_terminal_summary(terminalreporter):
    if QUALITY_ROWS:
        terminalreporter.section("method quality on shapes_cl (recorded)")
        width = max(len(what) for what, _ in QUALITY_ROWS)
        for what, measured in QUALITY_ROWS:
            terminalreporter.write_line(f"{what:<{width}}  {measured}")
