"""Every package's ``__all__`` names exactly what it exports (as httpx checks its own)."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["storage", "pacs.core", "pacs.index", "pacs.dimse"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    for member in exported:
        assert hasattr(module, member), f"{name}.__all__ names missing {member}"
    public = {
        member
        for member, value in vars(module).items()
        if not member.startswith("_")
        and getattr(value, "__module__", "").startswith(name)
        and not isinstance(value, type(importlib))
    }
    assert public <= exported, f"{name} exports {sorted(public - exported)} without __all__"
