"""Scoring: our BLEU and chrF are sacreBLEU's, and `transformer-evaluate` reports them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from tiny_runs import PAIRS, call_main, make_tiny_run

from transformer.cli.evaluate import main
from transformer.decoding.scoring import corpus_scores, score
from transformer.decoding.translator import Translator

pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py

HYPOTHESES = [
    "The cat sat on the mat.",
    "A dog runs in the park today.",
    "",
    "I'm going home, said she.",
    "Translation is hard",
]
REFERENCES = [
    "The cat sat on a mat.",
    "A dog is running in the park today.",
    "Nothing here.",
    "I am going home, she said.",
    "Translation is hard.",
]
SECOND_REFERENCES = [
    "A cat was sitting on the mat.",
    "Today a dog runs in the park.",
    "Nothing.",
    "She said: I'm going home.",
    "Translating is difficult.",
]


def write(path: Path, lines: list[str]) -> Path:
    """Write lines as a UTF-8 text file (gzip-compressed for .gz names)."""
    text = "".join(f"{line}\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run transformer-evaluate in-process: (exit code, stdout, stderr)."""
    code = call_main(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_scores_equal_sacrebleu_corpus_functions() -> None:
    for references in ([REFERENCES], [REFERENCES, SECOND_REFERENCES]):
        scores = corpus_scores(HYPOTHESES, references)
        assert scores.bleu == sacrebleu.corpus_bleu(HYPOTHESES, references).score
        assert scores.chrf == sacrebleu.corpus_chrf(HYPOTHESES, references).score
        assert scores.num_sentences == len(HYPOTHESES)
        assert f"nrefs:{len(references)}" in scores.bleu_signature
        assert scores.bleu_string.startswith("BLEU = ")
        assert scores.chrf_string.startswith("chrF2 = ")


def test_score_is_the_plain_mapping_of_corpus_scores() -> None:
    assert score(HYPOTHESES, [REFERENCES]) == corpus_scores(HYPOTHESES, [REFERENCES]).as_dict()


def test_identical_hypotheses_score_100() -> None:
    scores = corpus_scores(REFERENCES, [REFERENCES])
    assert scores.bleu == pytest.approx(100.0)
    assert scores.chrf == pytest.approx(100.0)


def test_reference_stream_of_another_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="reference stream 1 has 4 sentences"):
        corpus_scores(HYPOTHESES, [REFERENCES[:4]])


def test_cli_bleu_equals_the_sacrebleu_command(tmp_path: Path, capsys) -> None:
    hyp = write(tmp_path / "hyp.txt", HYPOTHESES)
    ref = write(tmp_path / "ref.txt", REFERENCES)
    code, out, _ = run_main(capsys, "--hypotheses", hyp, "--reference", ref, "--json")
    assert code == 0
    ours = json.loads(out)
    theirs = subprocess.run(
        [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-b", "-w", "4"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert round(ours["bleu"], 4) == float(theirs.stdout.strip())
    assert ours["num_sentences"] == len(HYPOTHESES)
    assert ours["bleu_string"].startswith("BLEU = ")
    assert set(ours) >= {"bleu", "chrf", "bleu_signature", "chrf_signature"}


def test_cli_reads_gzip_and_several_references(tmp_path: Path, capsys) -> None:
    hyp = write(tmp_path / "hyp.txt.gz", HYPOTHESES)
    ref1 = write(tmp_path / "ref1.txt.gz", REFERENCES)
    ref2 = write(tmp_path / "ref2.txt", SECOND_REFERENCES)
    code, out, _ = run_main(
        capsys, "--hypotheses", hyp, "--reference", ref1, "--reference", ref2, "--json"
    )
    assert code == 0
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, SECOND_REFERENCES]).score
    assert json.loads(out)["bleu"] == pytest.approx(expected)


def test_cli_text_report_has_bleu_and_chrf_lines_with_signatures(tmp_path: Path, capsys) -> None:
    hyp = write(tmp_path / "hyp.txt", HYPOTHESES)
    ref = write(tmp_path / "ref.txt", REFERENCES)
    code, out, _ = run_main(capsys, "--hypotheses", hyp, "--reference", ref)
    assert code == 0
    bleu_line, chrf_line = out.splitlines()
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert bleu_line.startswith(f"BLEU = {expected:.2f} ")
    assert "tok:13a" in bleu_line
    assert chrf_line.startswith("chrF2 = ") and "nc:6" in chrf_line


def test_cli_files_of_different_lengths_are_an_error_naming_both(tmp_path: Path, capsys) -> None:
    hyp = write(tmp_path / "hyp.txt", HYPOTHESES)
    ref = write(tmp_path / "ref.txt", REFERENCES[:3])
    code, out, err = run_main(capsys, "--hypotheses", hyp, "--reference", ref)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(hyp) in err and str(ref) in err and "5 lines" in err and "has 3" in err


@pytest.mark.parametrize(
    "problem",
    ["missing reference", "binary hypotheses", "neither run nor hypotheses", "empty files"],
)
def test_cli_bad_input_is_one_error_line(tmp_path: Path, capsys, problem: str) -> None:
    hyp = write(tmp_path / "hyp.txt", HYPOTHESES)
    ref = write(tmp_path / "ref.txt", REFERENCES)
    argv: list[object] = ["--hypotheses", hyp, "--reference", ref]
    if problem == "missing reference":
        argv[3] = tmp_path / "nope.txt"
    elif problem == "binary hypotheses":
        hyp.write_bytes(b"\x00\x01\x02binary\x00" * 10)
    elif problem == "neither run nor hypotheses":
        argv = ["--reference", ref]
    else:
        hyp.write_bytes(b"")
        ref.write_bytes(b"")
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_translates_the_source_writes_and_scores_the_hypotheses(tmp_path: Path, capsys) -> None:
    run = make_tiny_run(tmp_path / "run")
    source = write(tmp_path / "src.en.gz", [src for src, _ in PAIRS[:6]] + [""])
    ref = write(tmp_path / "ref.de", [tgt for _, tgt in PAIRS[:6]] + [""])
    output = tmp_path / "hyp.de"
    code, out, _ = run_main(
        capsys, "--run", run, "--source", source, "--reference", ref, "--output", output, "--json"
    )
    assert code == 0
    hypotheses = output.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hypotheses) == 7 and hypotheses[-1] == ""
    expected = Translator.from_run(run, "best", "cpu").translate([src for src, _ in PAIRS[:6]])
    assert hypotheses[:6] == [nbest[0].text for nbest in expected]
    reported = json.loads(out)
    assert reported["num_sentences"] == 7
    references = [tgt for _, tgt in PAIRS[:6]] + [""]
    assert reported["bleu"] == sacrebleu.corpus_bleu(hypotheses, [references]).score


def test_cli_source_and_reference_of_different_lengths_fail_before_translating(
    tmp_path: Path, capsys
) -> None:
    source = write(tmp_path / "src.en", ["a", "b", "c"])
    ref = write(tmp_path / "ref.de", ["a", "b"])
    code, out, err = run_main(
        capsys, "--run", tmp_path / "no-run", "--source", source, "--reference", ref
    )
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "src.en has 3 lines" in err and "ref.de has 2" in err
