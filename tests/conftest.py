"""Shared pytest options and fixtures."""

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

# The in-process page tests (streamlit.testing AppTest) run no JavaScript, so they cannot run
# Explore's instant view (drawn in the browser, app_pages/ui/instant.py); with instant steps on by
# default they test the server-drawn view. The browser tests set DPAMT_INSTANT for each server.
os.environ.setdefault("DPAMT_INSTANT", "0")
# Tests start searches (explorer.interleavings.job) without always waiting for the last one to
# end; a server's limit of searches at once (one per CPU) would queue the next test's. The
# limit's own test sets it (tests/test_explore_slots.py).
os.environ.setdefault("DPAMT_MAX_SEARCHES", "64")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite sample_traces/*.golden.* from the current engine instead of diffing",
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes on loopback, no dashboard, shared by a test module:
    the one `explorer.sweeps.sweep.dask_client` makes for ``--workers 2`` (the tests use the
    project's own set-up, not a copy of it)."""
    from explorer.sweeps.sweep import dask_client

    with dask_client(workers=2) as client:
        yield client


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port nothing listens on (for an unreachable scheduler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
