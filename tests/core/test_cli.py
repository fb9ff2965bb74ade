"""`mm-run` entry points that work from the foundation on."""

from __future__ import annotations

import json
import subprocess
import sys

from mm_core.cli.main import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mm_core.cli.main", *args], capture_output=True, text=True)


def test_version_lists_core_and_plugins():
    out = _run("--version")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mm-core ")
    assert any(line.startswith("mm-qwen ") for line in lines)


def test_plugins_table_and_json(capsys):
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["name", "version", "status"]
    for name in ("mm-qwen", "mm-glm", "mm-internvl", "mm-visualglm"):
        assert name in table
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"name", "version", "status", "provides", "error"} <= set(data[0])


def test_unknown_subcommand_fails():
    out = _run("no-such-command")
    assert out.returncode != 0


def test_user_errors_print_a_message_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  no_such_field: 1\n")
    out = _run("finetune", "--config", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "no_such_field" in out.stderr and str(bad) in out.stderr
