"""Translation of raw text: the Translator and `transformer-translate`.

A tiny random model translates into garbage; the tests check what holds regardless: batches
equal one-by-one translation, input order and line count survive, and bad input is one
`error:` line with exit code 2.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import call_main, make_tiny_run, tiny_model

from transformer.cli.translate import main
from transformer.data.batching import token_batches
from transformer.data.tokenizer import load_tokenizers
from transformer.decoding.translator import Translator
from transformer.training.checkpoint import save_checkpoint

LINES = [
    "how are you",
    "",
    "the weather is nice today and the house is big",
    "good night",
    "   ",
    "my brother reads a book about the station",
    "i",
]
pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("translate") / "run")


@pytest.fixture(scope="module")
def translator(run_dir: Path) -> Translator:
    return Translator.from_run(run_dir, "best", "cpu")


def texts(translator: Translator, lines: list[str], **decoding: object) -> list[str]:
    """The best translation of each line, as the library computes it."""
    config = dataclasses.replace(translator.config.decoding, **decoding)
    return [nbest[0].text for nbest in translator.translate(lines, config)]


def run_main(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run transformer-translate in-process: (exit code, stdout, stderr)."""
    code = call_main(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, out: str, err: str) -> None:
    """The user-error contract: exit code 2, nothing on stdout, one `error:` line on stderr."""
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the Translator


@pytest.mark.parametrize("beam_size", [1, 2])
def test_batched_translation_equals_one_by_one_in_input_order(
    translator: Translator, beam_size: int
) -> None:
    decoding = dataclasses.replace(
        translator.config.decoding, beam_size=beam_size, nbest=1, batch_tokens=24
    )
    batched = translator.translate(LINES, decoding)
    single = [translator.translate([line], decoding)[0] for line in LINES]
    assert [n[0].text for n in batched] == [n[0].text for n in single]
    assert [n[0].score for n in batched] == pytest.approx([n[0].score for n in single], abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_batches_decoded_in_parallel_threads_equal_one_at_a_time(
    run_dir: Path, translator: Translator, beam_size: int
) -> None:
    parallel = Translator.from_run(run_dir, "best", "cpu", workers=3)
    decoding = dataclasses.replace(
        translator.config.decoding, beam_size=beam_size, nbest=1, batch_tokens=12
    )
    expected = translator.translate(LINES, decoding)
    assert parallel.translate(LINES, decoding) == expected  # same texts, scores, order


def test_two_workers_on_a_cpu_share_its_threads(run_dir: Path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        code, out, _ = run_main(capsys, "--run", run_dir, "--text", "hello", "--workers", 2)
        assert code == 0 and out.count("\n") == 1
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)  # one thread: one worker by default, threads untouched
        code, _, _ = run_main(capsys, "--run", run_dir, "--text", "hello")
        assert code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_empty_and_blank_lines_give_empty_translations(translator: Translator) -> None:
    outputs = translator.translate(LINES)
    assert len(outputs) == len(LINES)
    for line, nbest in zip(LINES, outputs, strict=True):
        if not line.strip():
            assert [h.text for h in nbest] == [""]


def test_token_batches_respect_the_budget_and_cover_every_sentence() -> None:
    lengths = [3, 9, 1, 4, 4, 12, 2]
    batches = token_batches(lengths, batch_tokens=10)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or len(batch) * width <= 10


def test_translations_are_detokenized_target_ids(translator: Translator, run_dir: Path) -> None:
    tgt = load_tokenizers(run_dir / "tokenizer").tgt
    for nbest in translator.translate(LINES):
        for hypothesis in nbest:
            assert hypothesis.text == tgt.decode(list(hypothesis.tokens))


def test_too_long_line_is_truncated_with_a_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_tiny_run(tmp_path / "run", max_positions=6, positional_encoding="learned")
    short = Translator.from_run(run, "last", "cpu")
    long_line = " ".join(["the weather is nice today"] * 4)
    with caplog.at_level(logging.WARNING, logger="transformer"):
        outputs = short.translate(["i", long_line], first_line=10)
    assert len(outputs) == 2
    assert any(
        "line 11" in r.getMessage() and "limit of 5" in r.getMessage() for r in caplog.records
    )
    assert not any("line 10" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the command


def test_text_flags_translate_each_in_order(run_dir: Path, translator: Translator, capsys) -> None:
    code, out, _ = run_main(capsys, "--run", run_dir, "--text", LINES[0], "--text", LINES[2])
    assert code == 0
    assert out.splitlines() == texts(translator, [LINES[0], LINES[2]])


def test_input_file_keeps_order_and_line_count(
    run_dir: Path, translator: Translator, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    output = tmp_path / "output.txt"
    code, out, _ = run_main(
        capsys, "--run", run_dir, "--input", source, "--output", output, "--max-tokens", 20
    )
    assert code == 0 and out == ""
    written = output.read_text(encoding="utf-8").split("\n")
    assert written[-1] == "" and written[:-1] == texts(translator, LINES)
    assert written[1] == written[4] == ""


def test_gzip_input_translates_like_plain_text(run_dir: Path, tmp_path: Path, capsys) -> None:
    plain, packed = tmp_path / "in.txt", tmp_path / "in.txt.gz"
    plain.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    results = [run_main(capsys, "--run", run_dir, "--input", path) for path in (plain, packed)]
    assert results[0][0] == results[1][0] == 0
    assert results[0][1] == results[1][1]
    assert len(results[1][1].splitlines()) == len(LINES)


def test_stdin_pipe_is_translated_in_chunks_in_order(
    run_dir: Path, translator: Translator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr("transformer.cli.translate.CHUNK_LINES", 3)
    data = ("\r\n".join(LINES) + "\r\n").encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run_main(capsys, "--run", run_dir, "--beam-size", 1)
    assert code == 0
    assert out.split("\n")[:-1] == texts(translator, LINES, beam_size=1)


def test_invalid_utf8_line_warns_with_its_number_and_keeps_the_line_count(
    run_dir: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "mixed.txt"
    source.write_bytes(b"good night\nthe house \xff\xfe is big\n\ni am tired\n")
    code, out, err = run_main(capsys, "--run", run_dir, "--input", source)
    assert code == 0
    assert len(out.split("\n")) == 5 and out.split("\n")[2] == ""
    assert "line 2" in err and "invalid UTF-8" in err
    assert "line 1:" not in err and "line 4" not in err


def test_interactive_prompt_translates_each_line(
    run_dir: Path, translator: Translator, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"how are you\ngood night\n")))
    code, out, err = run_main(capsys, "--run", run_dir)
    assert code == 0
    assert out.splitlines() == texts(translator, ["how are you", "good night"])
    assert err.count("> ") == 3


def test_nbest_output_format(run_dir: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "input.txt"
    source.write_text("how are you\n\ngood night\n", encoding="utf-8")
    code, out, _ = run_main(
        capsys, "--run", run_dir, "--input", source, "--beam-size", 3, "--nbest", 3
    )
    assert code == 0
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert all(len(row) == 3 for row in rows)
    ids = [int(row[0]) for row in rows]
    assert ids == sorted(ids) and set(ids) == {0, 1, 2}
    assert [row[1] for row in rows if row[0] == "1"] == [""]
    for i in (0, 2):
        scores = [float(row[2]) for row in rows if int(row[0]) == i]
        assert 1 <= len(scores) <= 3 and scores == sorted(scores, reverse=True)


def test_scores_flag_appends_a_tab_and_the_score(
    run_dir: Path, translator: Translator, capsys
) -> None:
    code, out, _ = run_main(capsys, "--run", run_dir, "--text", "good night", "--scores")
    assert code == 0
    text, score = out.rstrip("\n").split("\t")
    best = translator.translate(["good night"])[0][0]
    assert text == best.text and float(score) == pytest.approx(best.score, abs=1e-4)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def broken_checkpoints(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("broken")
    good = (run_dir / "checkpoints" / "best.pt").read_bytes()
    truncated = directory / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    other = directory / "other_size.pt"
    save_checkpoint({"model": tiny_model(d_model=48).state_dict(), "step": 1}, other)
    return {"truncated": truncated, "other size": other}


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("missing run", "does not exist"),
        ("missing checkpoint", "does not exist"),
        ("truncated checkpoint", "corrupted or truncated"),
        ("checkpoint of another size", "does not fit the model"),
        ("beam size 0", "--beam-size"),
        ("nbest above beam", "--nbest"),
        ("workers 0", "--workers"),
        ("binary input", "not a UTF-8 text file"),
        ("missing input", "does not exist"),
        ("broken gzip", "cannot read"),
    ],
)
def test_bad_input_is_one_error_line_with_exit_code_2(
    run_dir: Path, broken_checkpoints: dict, tmp_path: Path, capsys, problem: str, expected: str
) -> None:
    argv: list[object] = ["--run", run_dir, "--text", "hello"]
    if problem == "missing run":
        argv[1] = tmp_path / "no-such-run"
    elif problem == "missing checkpoint":
        argv += ["--checkpoint", tmp_path / "nope.pt"]
    elif problem == "truncated checkpoint":
        argv += ["--checkpoint", broken_checkpoints["truncated"]]
    elif problem == "checkpoint of another size":
        argv += ["--checkpoint", broken_checkpoints["other size"]]
    elif problem == "beam size 0":
        argv += ["--beam-size", 0]
    elif problem == "nbest above beam":
        argv += ["--beam-size", 2, "--nbest", 3]
    elif problem == "workers 0":
        argv += ["--workers", 0]
    else:
        path = tmp_path / "input.txt.gz"
        if problem == "binary input":
            path = tmp_path / "input.bin"
            path.write_bytes(bytes(range(256)) * 4)
        elif problem == "broken gzip":
            path.write_bytes(gzip.compress(b"hello\n" * 1000)[:40])
        argv = ["--run", run_dir, "--input", path]
    code, out, err = run_main(capsys, *argv)
    assert_one_error_line(code, out, err)
    assert expected in err
    if problem == "checkpoint of another size":
        assert "size mismatch for" in err and "config.yaml" in err


def test_module_entry_point_reports_errors_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transformer.cli.translate", "--run", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=SUBPROCESS_ENV,
        timeout=120,
    )
    assert_one_error_line(result.returncode, result.stdout, result.stderr)


def test_module_entry_point_translates_a_pipe(run_dir: Path, translator: Translator) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "transformer.cli.translate", "--run", str(run_dir)],
        input="\n".join(LINES) + "\n",
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:-1] == texts(translator, LINES)


def test_bfloat16_decoding_uses_bfloat16_weights_and_keeps_the_line_count(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run")
    translator = Translator.from_run(run, "best", "cpu", torch.bfloat16)
    assert {p.dtype for p in translator.model.parameters()} == {torch.bfloat16}
    out = translator.translate(["hello there", "", "good morning to you"])
    assert len(out) == 3 and out[1][0].text == ""
    argv = ["--run", str(run), "--text", "hello", "--text", "", "--dtype", "bfloat16"]
    assert main(argv) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
