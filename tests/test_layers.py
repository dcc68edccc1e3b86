"""The package layering the design asks for, checked on the source: nft/ knows nothing of CF,
events/ nothing of the reconciler or the CLI, and the reconciler nothing of the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "nft": {"events", "reconciler", "cni", "cfnft"},
    "events": {"reconciler", "cni", "cfnft"},
    "reconciler": {"cfnft"},  # it may use cni.pending: the spool format both sides of DEL share
    "cni": {"reconciler", "cfnft", "nft", "nats", "aiohttp"},  # the plugin starts per container: stdlib only
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad and not (package == "cni" and path.name == "config_model.py"):
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package}/ imports what it must not: {offenders}"
