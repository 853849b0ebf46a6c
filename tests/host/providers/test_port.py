"""Every provider declared in pyproject's ``frieze.providers`` entry points loads, constructs with no
arguments, satisfies the port, and is named as its entry point."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from frieze.host.providers.base import ProviderCapabilities, SnapshotProvider

ROOT = Path(__file__).resolve().parents[3]
DECLARED = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["frieze.providers"]


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_declared_provider_implements_the_port(name: str) -> None:
    mod, _, cls = DECLARED[name].partition(":")
    provider = getattr(importlib.import_module(mod), cls)()
    assert isinstance(provider, SnapshotProvider)
    assert provider.name == name
    assert isinstance(provider.capabilities, ProviderCapabilities) and provider.capabilities.name == name
    assert provider.supports("/nonexistent/volume") is False  # bad input: a plain False, no exception


def test_all_four_are_declared() -> None:
    assert set(DECLARED) == {"btrfs", "reflink", "copy", "helper"}
