"""The one-shot commands as a user runs them: exit codes, messages, and the kernel left alone on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cell-state.json"


def cfnft(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cfnft.cli", *args], capture_output=True, text=True, timeout=60)


def table(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True).stdout


def test_help_teaches_every_command():
    out = cfnft("--help")
    assert out.returncode == 0
    for command in ("render", "apply", "check", "reconcile", "publish", "resync", "status", "bench"):
        assert f"cfnft {command}" in out.stdout


def test_render_prints_a_ruleset_nft_accepts(tmp_path, netns):
    out = cfnft("render", "--state", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("add table inet cfnft\n")
    path = tmp_path / "r.nft"
    path.write_text(out.stdout)
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(path)], check=True)
    # The printed batch creates exactly the table `apply` wants.
    again = cfnft("apply", "--state", str(EXAMPLE), "--netns", netns)
    assert again.returncode == 0 and "already matches" in again.stderr, again.stderr


def test_bad_document_exits_2_with_the_problem_and_touches_nothing(tmp_path, netns):
    doc = json.loads(EXAMPLE.read_text())
    doc["security_groups"][0]["rules"][0]["ports"] = "90-80"
    doc["containers"][0]["colour"] = "blue"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    out = cfnft("apply", "--state", str(bad), "--netns", netns)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "security_groups[0].rules[0].ports: '90-80'" in out.stderr
    assert "containers[0].colour: unknown key" in out.stderr
    assert "cfnft" not in table(netns), "the kernel must be untouched"


@pytest.mark.parametrize(
    "content,expected",
    [
        ("{not json", "line 1 column 2: not valid JSON"),
        ("[]", "a cell state must be a JSON object"),
    ],
)
def test_unreadable_documents_are_one_clear_message(tmp_path, content, expected):
    path = tmp_path / "doc.json"
    path.write_text(content)
    out = cfnft("render", "--state", str(path))
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr
    missing = cfnft("render", "--state", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "cannot read: No such file or directory" in missing.stderr


def test_apply_is_idempotent_and_check_reports_drift(netns):
    first = cfnft("apply", "--state", str(EXAMPLE), "--netns", netns)
    assert first.returncode == 0, first.stderr
    assert "committed" in first.stderr
    second = cfnft("apply", "--state", str(EXAMPLE), "--netns", netns)
    assert second.returncode == 0 and "nothing to do" in second.stderr
    assert cfnft("check", "--state", str(EXAMPLE), "--netns", netns).returncode == 0
    subprocess.run(["ip", "netns", "exec", netns, "nft", "flush", "chain", "inet", "cfnft", "forward"], check=True)
    drift = cfnft("check", "--state", str(EXAMPLE), "--netns", netns)
    assert drift.returncode == 1
    assert "add rule inet cfnft forward" in drift.stdout, "the repair is shown as nft commands"
    assert cfnft("apply", "--state", str(EXAMPLE), "--netns", netns).returncode == 0
    assert cfnft("check", "--state", str(EXAMPLE), "--netns", netns).returncode == 0


def test_missing_namespace_is_a_clear_error():
    out = cfnft("apply", "--state", str(EXAMPLE), "--netns", "cfnft-no-such-ns")
    assert out.returncode == 3 and "cfnft-no-such-ns" in out.stderr and "Traceback" not in out.stderr


def test_bad_reconciler_config_names_the_key(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"cell_id": "a", "metrics_listen": "x", "drift_probe_seconds": -1}))
    out = cfnft("reconcile", "--config", str(path))
    assert out.returncode == 2 and "drift_probe_seconds" in out.stderr and "Traceback" not in out.stderr
