"""The product type-checks: mypy over nft/, events/, reconciler/, cni/ and cfnft/ with the settings
in pyproject.toml ([tool.mypy]: strict, the pydantic plugin, the few relaxations each with its
reason). A type error fails this test with mypy's report. The run is incremental (.mypy_cache/), so
after the first it takes seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_product_type_checks() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
