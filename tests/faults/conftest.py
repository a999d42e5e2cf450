"""Fault-injection suite: long variants (@pytest.mark.slow) run only with MEMWATCHD_LONG=1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.faults.common import Daemons

LONG = os.environ.get("MEMWATCHD_LONG") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG:
        return
    skip = pytest.mark.skip(reason="long variant: set MEMWATCHD_LONG=1")
    for item in items:
        if "slow" in item.keywords and "faults" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    from tests.faults.common import Daemons

    d = Daemons()
    yield d
    d.close()
