"""The product wheel, the one that goes onto Diego cells, carries no lab and works without it.

Built with `pip wheel --no-deps .` as a release would build it, then installed into a fresh venv of
the system Python (with its site-packages, for Debian's nftables binding) that sees this venv's
third-party packages but neither cfnft's nor the lab's: there `cfnft render` must work, `cfnft --help`
must not offer the lab's commands, and `import lab` must fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = {"cfnft", "events", "reconciler", "nft", "cni"}
LAB = "lab"
SYSTEM_PYTHON = Path("/usr/bin/python3")
# Not part of the source a release builds from; build/ would also hand a stale module of an earlier
# build to the wheel, so the build runs on a copy of the tree without it.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "bench-results"
)


def run(*args: str | Path, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def third_party_view(site_packages: Path, into: Path) -> Path:
    """A directory of links to this venv's installed packages, less cfnft's and the lab's (their
    editable-install hooks and metadata too, or the lab's entry points would still be found)."""
    into.mkdir()
    for entry in site_packages.iterdir():
        name = entry.name
        ours = name.split(".")[0] in PRODUCT | {LAB} or name.startswith(("cfnft-", "cfnft_lab-", "__editable__"))
        if not ours and not name.endswith(".pth"):
            (into / name).symlink_to(entry)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    # No index and no build isolation: built offline with this venv's setuptools.
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", tmp / "dist",
        ".", cwd=source)  # fmt: skip
    (built,) = (tmp / "dist").glob("cfnft-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: the product runs on the system Python (setup.sh)")
    tmp = tmp_path_factory.mktemp("venv")
    env = tmp / "venv"
    run(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", "--without-pip", env)
    python = env / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    view = third_party_view(Path(sysconfig.get_path("purelib")), tmp / "third-party")
    (site / "third-party.pth").write_text(f"{view}\n")
    # This venv's pip, run with the new venv's Python; the dependencies are already in view.
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel)
    return env


def test_the_wheel_holds_the_product_and_no_lab(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == PRODUCT
    assert not [n for n in names if n.startswith(f"{LAB}/") or "/sim/" in n or "bench" in n or "demo" in n]
    assert "events/bbs/bbs.proto" in names, "package data"
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    commands = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cfnft = cfnft.cli:main" in commands and "cfnft.commands" not in commands


def test_the_installed_wheel_renders_without_the_lab(venv: Path, tmp_path: Path) -> None:
    python, cfnft = venv / "bin" / "python", venv / "bin" / "cfnft"
    where = run(python, "-c", "import cfnft, nftables; print(cfnft.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(venv), f"cfnft imported from outside the venv: {where}"
    proc = subprocess.run([python, "-c", "import lab"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "No module named 'lab'" in proc.stderr, proc.stderr

    state = ROOT / "examples" / "cell-state.json"
    rendered = run(cfnft, "render", "--state", state, cwd=tmp_path)
    assert rendered == run(Path(sys.executable).parent / "cfnft", "render", "--state", state)
    assert "table inet cfnft" in rendered

    usage = run(cfnft, "--help", cwd=tmp_path)
    assert "render" in usage and "cfnft demo" not in usage
    assert not {"demo", "bench"} & set(usage.split()), usage


def test_the_venv_sees_the_third_party_packages_only_through_the_view(venv: Path) -> None:
    """Otherwise the test above could pass by finding cfnft or the lab in this venv."""
    paths = run(venv / "bin" / "python", "-c", "import sys; print('\\n'.join(sys.path))").split()
    assert not [p for p in paths if os.path.realpath(p) in {str(ROOT), os.path.realpath(sysconfig.get_path("purelib"))}]
