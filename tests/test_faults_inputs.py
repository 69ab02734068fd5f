"""Hostile inputs: YAML alias bombs, out-of-range decoding numbers, text that is not Unicode.

Each is refused where it enters (the config loader, `DecodingConfig`, the server's schema)
with one message naming the file, key, flag or field, never with a traceback, an overflow or
gigabytes of memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from transformer.config import (
    ConfigError,
    config_from_dict,
    load_config,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MESSAGE_LIMIT = 500  # an error line: file, key, what is wrong (known keys), a few dozen value chars


def alias_bomb(levels: int) -> str:
    """A list of `levels` lists, each holding nine aliases of the one before: 9**levels leaves."""
    names = [f"n{i}" for i in range(levels)]
    rows = [f"&{names[0]} [" + ",".join(["x"] * 9) + "]"]
    rows += [
        f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]"
        for prev, cur in zip(names, names[1:], strict=False)
    ]
    return "[" + ", ".join(rows) + "]"


BOMB = alias_bomb(9)  # 300 bytes; 9**9 = 387 million values (3.4 GB as a repr) when expanded


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def capped_python(prelude: str, code: str, *args: object) -> subprocess.CompletedProcess:
    """Run `code` in a new Python after `prelude`, with 512 MiB more address space than the
    prelude's imports took: a value that expands to gigabytes fails fast there."""
    script = f"""
import resource, sys
{prelude}
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
limit = size + 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
{code}
"""
    argv = [sys.executable, "-c", script, *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="the memory cap reads /proc/self/status"
)


def error_line(code: int, stderr: str, *fragments: str) -> str:
    """The one `error:` line of a failed command (exit code 2, no traceback), checked."""
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert len(lines[0]) < MESSAGE_LIMIT, lines[0]
    return lines[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Iterator[Callable[..., tuple[int, str]]]:
    """A command's `main` in this process: (exit code, stderr); torch's threads given back."""
    threads = torch.get_num_threads()

    def call(main: Callable[[list[str]], int], *args: object) -> tuple[int, str]:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        return code, capsys.readouterr().err

    yield call
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- 5: YAML bombs


@needs_proc
def test_load_config_refuses_an_alias_bomb_naming_the_file_and_key_in_bounded_memory(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, f"model:\n  d_model: {BOMB}\n", "bomb.yaml")
    code = """
import json, time
from transformer.config import load_config
start = time.perf_counter()
try:
    load_config(sys.argv[1])
    print(json.dumps({"loaded": True}))
except Exception as error:
    print(json.dumps({"type": type(error).__name__, "key": getattr(error, "key", None),
                      "text": str(error)[:1000], "seconds": time.perf_counter() - start}))
"""
    result = capped_python("import transformer.config", code, path)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout)
    assert outcome["type"] == "ConfigError", outcome
    assert outcome["key"] == "model.d_model"
    assert outcome["text"].startswith(f"{path}: model.d_model: ") and "alias" in outcome["text"]
    assert len(outcome["text"]) < MESSAGE_LIMIT
    assert outcome["seconds"] < 5


@needs_proc
def test_transformer_train_refuses_an_alias_bomb_with_one_error_line_fast(tmp_path: Path) -> None:
    path = write(tmp_path, f"model:\n  d_model: {BOMB}\n", "bomb.yaml")
    run_dir = tmp_path / "run"
    code = "raise SystemExit(train.main(sys.argv[1:]))"
    result = capped_python(
        "import transformer.cli.train as train", code, "--config", path, "--run-dir", run_dir
    )
    error_line(result.returncode, result.stderr, str(path), "model.d_model", "alias")
    assert not run_dir.exists()


@needs_proc
def test_transformer_train_refuses_an_alias_bomb_in_a_set_value_naming_the_flag_and_key(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "model:\n  d_model: 64\n")
    code = "raise SystemExit(train.main(sys.argv[1:]))"
    result = capped_python(
        "import transformer.cli.train as train",
        code,
        "--config",
        path,
        "--run-dir",
        tmp_path / "run",
        "--set",
        f"model.d_model={BOMB}",
    )
    error_line(result.returncode, result.stderr, "--set", "model.d_model", "alias")


def test_aliases_expanding_past_the_bound_are_refused_even_where_no_error_would_show_them(
    tmp_path: Path,
) -> None:
    # 9**5 = 59,049 values: harmless to expand, but no config repeats itself that much
    with pytest.raises(ConfigError, match="alias") as info:
        load_config(write(tmp_path, f"training:\n  optimizer_betas: {alias_bomb(5)}\n"))
    assert info.value.key == "training.optimizer_betas"
    with pytest.raises(ConfigError, match="alias") as info:
        load_config(write(tmp_path, "model: {}\n"), [f"model.d_model={alias_bomb(5)}"])
    assert (info.value.source, info.value.key) == ("--set", "model.d_model")


def test_an_alias_that_holds_itself_is_refused_naming_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds itself") as info:
        load_config(write(tmp_path, "training:\n  optimizer_betas: &a [0.9, *a]\n"))
    assert info.value.key == "training.optimizer_betas"


def test_scalar_and_mapping_aliases_of_a_real_config_still_load(tmp_path: Path) -> None:
    text = (
        "model:\n  d_model: &width 64\n  d_ff: *width\n  num_heads: 2\n"
        "data:\n  train: &corpus\n    src_path: a.en\n    tgt_path: a.de\n"
        "  valid:\n    <<: *corpus\n    src_path: b.en\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.model.d_ff == config.model.d_model == 64
    assert config.data.valid is not None and config.data.train is not None
    assert (config.data.valid.src_path, config.data.valid.tgt_path) == ("b.en", "a.de")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model:\n  d_model: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
        ("model:\n  d_model: " + "9" * 5000 + "\n", "line 2: cannot read"),
        ("data:\n  cache_dir: 2020-13-45\n", "line 2: cannot read"),
    ],
    ids=["3000 nested lists", "a 5000-digit integer", "month 13"],
)
def test_yaml_that_pyyaml_cannot_build_is_a_config_error_naming_the_file(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert len(str(info.value)) < MESSAGE_LIMIT


def _nested(levels: int) -> list:
    value: list = ["x"] * 9
    for _ in range(levels - 1):
        value = [value] * 9  # shared, as YAML aliases are: 9**levels leaves, little memory
    return value


HUGE_VALUES = {
    "nested list for an integer": ({"model": {"d_model": _nested(6)}}, "model.d_model"),
    "long string for a choice": ({"model": {"activation": "x" * 100_000}}, "model.activation"),
    "long list for two numbers": (
        {"training": {"optimizer_betas": [0.5] * 100_000}},
        "training.optimizer_betas",
    ),
    "nested list for a number list": (
        {"training": {"optimizer_betas": _nested(6)}},
        "training.optimizer_betas[0]",
    ),
    "long list for a section": ({"decoding": list(range(100_000))}, "decoding"),
    "long list for a corpus": ({"data": {"train": ["x"] * 100_000}}, "data.train"),
    "long unknown key": ({"model": {"y" * 100_000: 1}}, None),
    "huge integer where a size is checked": ({"model": {"d_model": 10**4000 + 1}}, "model.d_model"),
}


@pytest.mark.parametrize("case", HUGE_VALUES, ids=str)
def test_a_config_error_shows_at_most_a_few_dozen_characters_of_the_value(case: str) -> None:
    values, key = HUGE_VALUES[case]
    with pytest.raises(ConfigError) as info:
        config_from_dict(values, "huge.yaml")
    assert len(str(info.value)) < MESSAGE_LIMIT, str(info.value)[:MESSAGE_LIMIT]
    if key is not None:
        assert info.value.key == key


def test_a_malformed_override_shows_at_most_a_few_dozen_characters_of_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="override") as info:
        load_config(write(tmp_path, "model: {}\n"), ["x" * 100_000])
    assert len(str(info.value)) < MESSAGE_LIMIT
