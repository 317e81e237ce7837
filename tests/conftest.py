"""Shared pytest options."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite sample_traces/*.golden.* from the current engine instead of diffing",
    )
