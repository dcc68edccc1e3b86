"""The package layering of docs/design.md §1.4, checked by import-linter with the contracts in
pyproject.toml ([tool.importlinter]): nft/ knows nothing of CF, events/ nothing of nft/ or the
reconciler, the reconciler nothing of the CLI, the plugin only the standard library, and the product
nothing of the lab. A forbidden import, direct or through a third module, fails this test with
import-linter's explanation of the chain."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_every_import_contract_is_kept() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    # The graph takes well under a second to build; a cache would only be one more thing to ignore.
    proc = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(contracts)} kept, 0 broken." in proc.stdout, proc.stdout
