"""The CTranslate2 engine decodes as our searches do, and the commands choose it with --engine.

Equality of outputs is tested on a small model trained on the shipped corpus (a random
model's near-ties would make argmax comparisons a matter of float rounding); properties that
hold for any model (lengths, PAD, order, formats) are tested on random tiny models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run

import benchmarks.decode as decode_benchmark
from transformer.cli.evaluate import main as evaluate_main
from transformer.cli.train import main as train_main
from transformer.cli.translate import main as translate_main
from transformer.data.special_ids import BOS_ID, EOS_ID, PAD_ID
from transformer.decoding.search import gnmt_length_penalty, max_output_lengths
from transformer.decoding.translator import Translation, Translator
from transformer.export.directory import export_run
from transformer.export.engine import CTranslate2Translator
from transformer.training.checkpoint import load_checkpoint, save_checkpoint

pytest.importorskip("ctranslate2")

ROOT = Path(__file__).resolve().parents[1]
TEST_EN, TEST_DE = ROOT / "data" / "test.en", ROOT / "data" / "test.de"
LINES = ["how are you", "", "the weather is nice today and the house is big", "   ", "i"]


@pytest.fixture(autouse=True)
def keep_logging_and_threads() -> Iterator[None]:
    """The commands install a handler on the captured stderr and may set torch's threads."""
    root = logging.getLogger()
    handlers, level, threads = root.handlers[:], root.level, torch.get_num_threads()
    yield
    root.handlers[:], root.level = handlers, level
    torch.set_num_threads(threads)


def best(translations: list[list[Translation]]) -> list[Translation]:
    return [nbest[0] for nbest in translations]


def decoding_of(translator: Translator, **changes: object):
    return dataclasses.replace(translator.config.decoding, **changes)


def run_command(
    main: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], *argv: object
) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/toy.yaml trained for 150 steps (about half a minute on one thread)."""
    run = tmp_path_factory.mktemp("trained") / "toy"
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    overrides = [
        "training.max_steps=150",
        "training.max_time_minutes=0",
        "training.eval_every=150",
        "training.eval_bleu=false",
        "training.progress_bar=false",
        "training.device=cpu",
    ]
    config = ROOT / "configs" / "toy.yaml"
    try:
        assert (
            train_main(["--config", str(config), "--run-dir", str(run), "--set", *overrides]) == 0
        )
    finally:
        root.handlers[:], root.level = handlers, level
    return run


@pytest.fixture(scope="module")
def engines(trained_run: Path) -> tuple[Translator, CTranslate2Translator]:
    export_run(trained_run, trained_run / "exported")
    return (
        Translator.from_run(trained_run, device="cpu"),
        CTranslate2Translator.from_export(trained_run / "exported", threads=1),
    )


@pytest.fixture(scope="module")
def test_lines() -> list[str]:
    return TEST_EN.read_text(encoding="utf-8").splitlines()


def test_greedy_outputs_and_scores_equal_ours_on_every_test_line(engines, test_lines) -> None:
    ours, theirs = engines
    decoding = decoding_of(ours, beam_size=1)
    expected, got = (
        best(ours.translate(test_lines, decoding)),
        best(theirs.translate(test_lines, decoding)),
    )
    assert [t.text for t in got] == [t.text for t in expected]
    assert [t.tokens for t in got] == [t.tokens for t in expected]
    assert [t.score for t in got] == pytest.approx([t.score for t in expected], abs=1e-3)


def test_beam_5_outputs_equal_ours_on_95_percent_of_the_test_lines(engines, test_lines) -> None:
    ours, theirs = engines
    decoding = decoding_of(ours, beam_size=5, nbest=1)
    expected, got = (
        best(ours.translate(test_lines, decoding)),
        best(theirs.translate(test_lines, decoding)),
    )
    same = [(e.score, g.score) for e, g in zip(expected, got, strict=True) if e.text == g.text]
    assert len(same) >= 0.95 * len(test_lines)
    assert [g for _, g in same] == pytest.approx([e for e, _ in same], abs=1e-3)


def test_nbest_scores_are_our_models_length_penalised_log_probs_best_first(engines) -> None:
    ours, theirs = engines
    decoding = decoding_of(ours, beam_size=5, nbest=3, length_penalty=1.0)
    lines = ["i am hungry", "where is the station", "the dog is sleeping"]
    for line, nbest in zip(lines, theirs.translate(lines, decoding), strict=True):
        expected = ours.translate([line], decoding)[0][0]
        assert (nbest[0].text, nbest[0].tokens) == (expected.text, expected.tokens)
        src = torch.tensor([ours.source_ids(line)])
        (longest,) = max_output_lengths(src, decoding.max_len_a, decoding.max_len_b, PAD_ID)
        for hypothesis in nbest:
            # A hypothesis cut at the longest output has no end-of-sentence to score.
            end = [EOS_ID] if len(hypothesis.tokens) < longest else []
            target = torch.tensor([[BOS_ID, *hypothesis.tokens, *end]])  # (1, n + 1)
            with torch.no_grad():
                log_probs = ours.model(src, target[:, :-1]).log_softmax(dim=-1)[0]  # (n, V)
            log_prob = log_probs.gather(1, target[0, 1:, None]).sum().item()
            n = target.shape[1] - 1  # the pieces scored, EOS included when there is one
            assert hypothesis.score == pytest.approx(
                log_prob / gnmt_length_penalty(n, 1.0), abs=1e-3
            )
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


def test_translate_exports_the_run_first_then_prints_what_pytorch_prints(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", trained_run, "--input", TEST_EN, "--scores", "--beam-size", "1"]
    code, pytorch, _ = run_command(translate_main, capsys, *args)
    assert code == 0
    code, ctranslate2, err = run_command(translate_main, capsys, *args, "--engine", "ctranslate2")
    assert code == 0, err
    assert "has no CTranslate2 export: exporting" in err
    assert (trained_run / "ctranslate2" / "export.json").is_file()
    rows = [line.split("\t") for line in ctranslate2.splitlines()]
    expected = [line.split("\t") for line in pytorch.splitlines()]
    assert [text for text, _ in rows] == [text for text, _ in expected]
    assert [float(s) for _, s in rows] == pytest.approx([float(s) for _, s in expected], abs=2e-3)
    code, again, err = run_command(translate_main, capsys, *args, "--engine", "ctranslate2")
    assert again == ctranslate2 and "exporting" not in err  # the export is reused


def test_evaluate_with_ctranslate2_scores_the_same_bleu(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", trained_run, "--source", TEST_EN, "--reference", TEST_DE, "--json"]
    args += ["--beam-size", "5", "--export", trained_run / "exported"]
    code, out, err = run_command(evaluate_main, capsys, *args, "--engine", "ctranslate2")
    assert code == 0, err
    code, pytorch, _ = run_command(evaluate_main, capsys, *args[:-2])
    assert json.loads(out)["bleu"] == pytest.approx(json.loads(pytorch)["bleu"], abs=0.2)


# --------------------------------------------------------------------------- random tiny models


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_tiny_run(tmp_path_factory.mktemp("tiny") / "run")
    export_run(run, run / "exported")
    return run


@pytest.fixture(scope="module")
def tiny_engines(tiny_run: Path) -> tuple[Translator, CTranslate2Translator]:
    return (
        Translator.from_run(tiny_run, device="cpu"),
        CTranslate2Translator.from_export(tiny_run / "exported", threads=1),
    )


@pytest.mark.parametrize("beam_size", [1, 3])
def test_each_sentence_of_a_batch_stops_at_its_own_maximum_length(
    tiny_engines, beam_size: int
) -> None:
    # A random model rarely says EOS: outputs run to int(1.0 * source length + 0).
    ours, theirs = tiny_engines
    lines = ["how", "how are you", "the weather is nice today and the house is big"]
    decoding = decoding_of(ours, beam_size=beam_size, nbest=1, max_len_a=1.0, max_len_b=0)
    expected = best(ours.translate(lines, decoding))
    got = best(theirs.translate(lines, decoding))
    assert [len(t.tokens) for t in got] == [len(t.tokens) for t in expected]
    assert len({len(t.tokens) for t in got}) == 3


def test_learned_positions_cap_the_output_length_as_in_our_search(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "run", positional_encoding="learned", max_positions=8)
    export_run(run, run / "exported")
    ours = Translator.from_run(run, device="cpu")
    theirs = CTranslate2Translator.from_export(run / "exported", threads=1)
    decoding = decoding_of(ours, beam_size=1, max_len_a=0.0, max_len_b=50, min_length=50)
    lengths = [len(t.tokens) for t in best(theirs.translate(["how are you"], decoding))]
    assert lengths == [len(t.tokens) for t in best(ours.translate(["how are you"], decoding))]
    assert lengths == [8]


def test_pad_is_never_written_as_our_search_never_writes_it(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "run", tie_output_embeddings=False)
    checkpoint = run / "checkpoints" / "best.pt"
    state = load_checkpoint(checkpoint)
    weights = state["model"]
    # Make PAD the most probable token everywhere: a large bias in the last norm's output,
    # along which only PAD's output row points.
    bias = weights["decoder.layers.1.ff_sublayer.norm.bias"]
    bias.zero_()
    bias[0] = 10.0
    weights["output_proj.weight"][PAD_ID].zero_()
    weights["output_proj.weight"][PAD_ID, 0] = 10.0
    save_checkpoint(state, checkpoint)
    export_run(run, run / "exported")
    ours = Translator.from_run(run, device="cpu")
    theirs = CTranslate2Translator.from_export(run / "exported", threads=1)
    greedy = decoding_of(ours, beam_size=1)
    got = best(theirs.translate(LINES, greedy))
    assert [t.tokens for t in got] == [t.tokens for t in best(ours.translate(LINES, greedy))]
    for nbest in theirs.translate(LINES, decoding_of(ours, beam_size=2, nbest=2)):
        assert all(PAD_ID not in t.tokens for t in nbest)


def test_order_empty_lines_and_nbest_format_are_those_of_the_pytorch_engine(
    tiny_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--run", tiny_run, "--beam-size", "3", "--nbest", "2", "--max-tokens", "8"]
    args += [arg for line in LINES for arg in ("--text", line)]
    code, pytorch, _ = run_command(translate_main, capsys, *args)
    code, ctranslate2, err = run_command(
        translate_main, capsys, *args, "--engine", "ctranslate2", "--export", tiny_run / "exported"
    )
    assert code == 0, err
    keys = [line.split(" ||| ")[0] for line in ctranslate2.splitlines()]
    assert keys == [line.split(" ||| ")[0] for line in pytorch.splitlines()]
    assert keys == ["0", "0", "1", "2", "2", "3", "4", "4"]  # an empty line gives one line


def test_two_workers_translate_as_one(tiny_run: Path) -> None:
    one = CTranslate2Translator.from_export(tiny_run / "exported", threads=1)
    two = CTranslate2Translator.from_export(tiny_run / "exported", workers=2, threads=1)
    decoding = decoding_of(one, beam_size=2, nbest=2, batch_tokens=6)
    assert two.translate(LINES * 3, decoding) == one.translate(LINES * 3, decoding)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--export", "EXPORT"], "add --engine ctranslate2"),
        (["--engine", "ctranslate2", "--dtype", "bfloat16"], "--dtype bfloat16 is for"),
        (["--engine", "ctranslate2", "--export", "RUN"], "is not a CTranslate2 export"),
    ],
)
def test_engine_flags_that_do_not_fit_are_one_error_line(
    tiny_run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    paths = {"EXPORT": tiny_run / "exported", "RUN": tiny_run}
    flags = [paths.get(flag, flag) for flag in flags]
    code, out, err = run_command(
        translate_main, capsys, "--run", tiny_run, "--text", "how are you", *flags
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_without_ctranslate2_the_engine_names_the_extra_and_pytorch_still_works(
    tiny_run: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 fails
    args = ["--run", tiny_run, "--text", "how are you"]
    code, out, err = run_command(translate_main, capsys, *args, "--engine", "ctranslate2")
    assert code == 2 and "pip install 'transformer[ctranslate2]'" in err and out == ""
    code, out, err = run_command(translate_main, capsys, *args)
    assert code == 0 and out.count("\n") == 1


# --------------------------------------------------------------------------- the benchmark


def test_decode_benchmark_adds_ctranslate2_rows_for_both_weights_and_worker_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", tmp_path, "--sentences", "12", "--uncached-sentences", "6", "--batch-size"]
    argv += ["6", "--length", "3", "--beam", "2", "--cpu-only", "--rounds", "1", "--threads"]
    argv += ["1", "--vocab-size", "300", "--with-ctranslate2"]
    assert decode_benchmark.main([str(arg) for arg in argv]) == 0
    out = capsys.readouterr().out
    table = out[out.index("CTranslate2 ") :].splitlines()[2:]
    rows = [(" ".join(line.split()[:-6]), line.split()[-6], line.split()[-5]) for line in table]
    assert rows == [
        ("greedy", "float32", "1"),
        ("greedy", "float32", "2"),
        ("beam 2", "float32", "1"),
        ("beam 2", "float32", "2"),
        ("greedy", "int8", "1"),
        ("greedy", "int8", "2"),
        ("beam 2", "int8", "1"),
        ("beam 2", "int8", "2"),
    ]
