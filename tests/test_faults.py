"""What happens when things go wrong: the commands as a user runs them, on small runs.

Each test states a promise of the README's "What happens when things go wrong": a failed
command leaves every file as it was and says why in one `error:` line (exit code 2);
an output is never the same file as an input; an interrupted training saves where it is
and says how to continue; a diverging training stops and saves nothing non-finite; a run
directory is used by one training at a time; resuming checks everything before writing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_training import ROOT, tiny_config

from transformer.cli.train import main as train_main


def _parser_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "ArgumentParser"
    ]


# The benchmark scripts belong to the model and search work, which adds the flag there.
NOT_YET = {"benchmark_decode.py", "benchmark_model.py", "benchmark_train.py"}


def test_every_command_line_parser_refuses_abbreviated_flags() -> None:
    files = [*(ROOT / "transformer").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]
    calls = {path: _parser_calls(path) for path in files if path.name not in NOT_YET}
    assert sum(map(len, calls.values())) >= 7
    for name, found in calls.items():
        for call in found:
            keywords = {k.arg: k.value for k in call.keywords}
            where = f"{name.relative_to(ROOT)}:{call.lineno}"
            assert "allow_abbrev" in keywords, where
            assert ast.literal_eval(keywords["allow_abbrev"]) is False, where


def test_an_abbreviated_flag_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--conf", str(tiny_config(tmp_path)), "--run-dir", str(tmp_path / "r")])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --conf" in capsys.readouterr().err
