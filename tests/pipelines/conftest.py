"""The working directory of a user running ``abflow run``, shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from abflow.components.local_target import stop_local
from tests.pipelines.test_end_to_end import LocalProject


@pytest.fixture
def project(tmp_path: Path) -> Iterator[LocalProject]:
    """A fresh project folder; whatever its runs deployed is stopped afterwards."""
    local = LocalProject(tmp_path)
    yield local
    stop_local(local.data)
