"""The `ctrserve` command: every command listed, each dispatched to its package."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from app.__main__ import build_parser as serving_parser
from training.cli import build_parser as training_parser

pytestmark = pytest.mark.slow  # starts processes: the installed command

COMMAND = Path(sys.executable).parent / "ctrserve"


def _ctrserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COMMAND), *args], capture_output=True, text=True, timeout=120)


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (subcommands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(subcommands.choices)


def test_help_lists_every_command_of_both_packages() -> None:
    result = _ctrserve("--help")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines()[2:] if line.strip()]
    assert sorted(listed) == sorted(_commands(training_parser()) + _commands(serving_parser()))


def test_usage_and_errors_name_the_command_run() -> None:
    result = _ctrserve("prepare", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: ctrserve prepare")
    assert "ctrserve prepare: error: " in result.stderr


def test_commands_reach_their_packages(tmp_path: Path) -> None:
    synth = _ctrserve("synth", "--rows", "50", "--out", str(tmp_path / "s.csv"))
    assert synth.returncode == 0, synth.stderr
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 51
    publish = _ctrserve("publish", "--help")
    assert publish.returncode == 0
    assert "--if-empty" in publish.stdout


def test_an_unknown_command_is_refused() -> None:
    result = _ctrserve("fly")
    assert result.returncode == 2
    assert result.stderr.startswith("ctrserve: unknown command 'fly'")
