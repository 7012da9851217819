"""Shared fixtures."""

from __future__ import annotations

import pytest

from promu_lib.data import datasets


@pytest.fixture(autouse=True)
def _fresh_once_warnings():
    """Warnings said once per process (truncated posts) are said again in each test."""
    datasets._warned.clear()
    yield
