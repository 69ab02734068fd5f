"""Hostile inputs: YAML alias bombs, out-of-range decoding numbers, text that is not Unicode.

Each is refused where it enters (the config loader, `DecodingConfig`, the server's schema)
with one message naming the file, key, flag or field, never with a traceback, an overflow or
gigabytes of memory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run

from transformer.config import (
    MAX_BEAM_SIZE,
    MAX_LEN_A,
    MAX_LEN_B,
    MAX_LENGTH_PENALTY,
    ConfigError,
    DecodingConfig,
    config_from_dict,
    load_config,
)
from transformer.decoding.search import gnmt_length_penalty

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


# --------------------------------------------------------------------------- 8: decoding numbers

OUT_OF_RANGE_PENALTIES = [1000.0, 1e308, math.nan, math.inf, -math.inf, -1.0]


@pytest.mark.parametrize("alpha", OUT_OF_RANGE_PENALTIES, ids=str)
def test_decoding_config_refuses_a_length_penalty_outside_its_documented_bound(
    alpha: float,
) -> None:
    with pytest.raises(ConfigError) as info:
        DecodingConfig(length_penalty=alpha)
    assert info.value.key == "length_penalty"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("beam_size", 10**30),
        ("beam_size", MAX_BEAM_SIZE + 1),
        ("max_len_a", 1e308),
        ("max_len_a", MAX_LEN_A * 2),
        ("max_len_b", 10**400),
        ("max_len_b", MAX_LEN_B + 1),
    ],
    ids=str,
)
def test_decoding_config_refuses_sizes_that_would_overflow_a_length_or_an_index(
    key: str, value: float
) -> None:
    with pytest.raises(ConfigError) as info:
        DecodingConfig(**{key: value})
    assert info.value.key == key
    assert len(str(info.value)) < MESSAGE_LIMIT


def test_a_config_file_with_length_penalty_1e308_is_refused_naming_file_and_key(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "decoding:\n  length_penalty: 1e308\n")
    with pytest.raises(ConfigError, match=r"decoding\.length_penalty: must be a finite") as info:
        load_config(path)
    assert info.value.source == str(path)


def test_the_length_penalty_bound_keeps_every_penalty_finite_for_the_longest_outputs() -> None:
    # the longest output: MAX_LEN_A times a source of a million tokens, plus MAX_LEN_B
    longest = int(MAX_LEN_A * 10**6 + MAX_LEN_B)
    for n in (1, 1000, longest, 10**30):
        assert math.isfinite(gnmt_length_penalty(n, MAX_LENGTH_PENALTY))
    # CTranslate2 ranks by n ** (alpha / 2) in float32, for outputs of up to millions of tokens
    lengths = torch.tensor([1.0, 1000.0, MAX_LEN_A * 10**5 + MAX_LEN_B], dtype=torch.float32)
    assert torch.isfinite(lengths ** (MAX_LENGTH_PENALTY / 2)).all()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("inputs") / "run")


@pytest.mark.parametrize("engine", ["pytorch", "ctranslate2"])
@pytest.mark.parametrize("alpha", ["1000", "1e308", "nan", "inf"])
def test_transformer_translate_refuses_a_length_penalty_out_of_bounds_naming_the_flag(
    cli: Callable[..., tuple[int, str]], tiny_run: Path, engine: str, alpha: str
) -> None:
    from transformer.cli.translate import main

    if engine == "ctranslate2":
        pytest.importorskip("ctranslate2")
    code, stderr = cli(
        main, "--run", tiny_run, "--text", "how are you", "--device", "cpu",
        "--engine", engine, "--length-penalty", alpha,
    )  # fmt: skip
    error_line(code, stderr, "--length-penalty", "0 to 10")


@pytest.mark.parametrize("engine", ["pytorch", "ctranslate2"])
def test_both_engines_translate_at_the_largest_length_penalty_and_refuse_a_run_config_past_it(
    cli: Callable[..., tuple[int, str]], tiny_run: Path, tmp_path: Path, engine: str
) -> None:
    from transformer.cli.translate import main

    if engine == "ctranslate2":
        pytest.importorskip("ctranslate2")
    argv = ["--text", "how are you", "--device", "cpu", "--engine", engine]
    code, stderr = cli(main, "--run", tiny_run, *argv, "--length-penalty", MAX_LENGTH_PENALTY)
    assert code == 0, stderr[-2000:]
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    config_text = (tiny_run / "config.yaml").read_text(encoding="utf-8")
    (run / "config.yaml").write_text(
        config_text.replace("length_penalty: 0.6", "length_penalty: 1.0e+308"), encoding="utf-8"
    )
    assert "1.0e+308" in (run / "config.yaml").read_text(encoding="utf-8")
    code, stderr = cli(main, "--run", run, *argv)
    error_line(code, stderr, "decoding.length_penalty")


@pytest.fixture(scope="module")
def client(tiny_run: Path) -> Iterator[object]:
    pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from transformer.decoding.translator import Translator
    from transformer.serve.app import create_app

    translator = Translator.from_run(tiny_run, device="cpu")
    with TestClient(create_app(translator), raise_server_exceptions=False) as client:
        yield client


def post(client: object, path: str, body: str) -> object:
    """POST a raw JSON body (escapes such as \\ud800 and NaN travel as written)."""
    headers = {"content-type": "application/json"}
    return client.post(path, content=body.encode("ascii"), headers=headers)  # type: ignore[attr-defined]


def assert_refused(client: object, response: object, field: str) -> None:
    """A 4xx JSON error naming `field`, and the server still translates afterwards."""
    assert 400 <= response.status_code < 500, response.text  # type: ignore[attr-defined]
    error = response.json()  # type: ignore[attr-defined]
    assert error["field"] == field and error["error"].startswith(f"{field}: "), error
    after = post(client, "/translate", '{"text": "good night"}')
    assert after.status_code == 200, after.text  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/translate", "/explain"])
@pytest.mark.parametrize("alpha", ["1000", "1e308", "NaN", "Infinity", "-Infinity", "-1"])
def test_the_server_refuses_a_length_penalty_out_of_bounds_naming_the_field(
    client: object, path: str, alpha: str
) -> None:
    response = post(client, path, f'{{"text": "how are you", "length_penalty": {alpha}}}')
    assert_refused(client, response, "length_penalty")
    assert "0 to 10" in response.json()["error"]  # type: ignore[attr-defined]


def test_the_server_decodes_at_the_largest_length_penalty(client: object) -> None:
    body = f'{{"text": "how are you", "beam_size": 3, "length_penalty": {MAX_LENGTH_PENALTY}}}'
    for path in ("/translate", "/explain"):
        assert post(client, path, body).status_code == 200  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- 9: lone surrogates

SURROGATE_BODIES = [
    ("/translate", r'{"text": "\ud800"}', "text"),
    ("/translate", r'{"text": "\udfff"}', "text"),
    ("/translate", r'{"text": "how \udfff are you"}', "text"),
    ("/translate", r'{"texts": ["how are you", "\ud800"]}', "texts[1]"),
    ("/translate", r'{"texts": ["\udfff"], "beam_size": 2}', "texts[0]"),
    ("/explain", r'{"text": "\ud800"}', "text"),
    ("/explain", r'{"text": "good \udfff night"}', "text"),
]


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_BODIES, ids=str)
def test_a_lone_surrogate_in_any_text_field_is_a_4xx_naming_the_field(
    client: object, path: str, body: str, field: str
) -> None:
    response = post(client, path, body)
    assert_refused(client, response, field)
    assert "surrogate" in response.json()["error"]  # type: ignore[attr-defined]


def test_a_surrogate_pair_escape_is_one_character_and_is_translated(client: object) -> None:
    response = post(client, "/translate", r'{"text": "\ud83d\ude00 good night"}')
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
