"""Corpus files that hold no pairs or break their format's rules: one error naming file and line.

Each bad file is checked twice: through `load_corpus` (the DataError's message) and through
`transformer-train` (one `error:` line, exit code 2, no traceback). Valid tables keep loading
the same pairs in the same order.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
import yaml

from transformer.cli.train import main as train_main
from transformer.config import CorpusConfig
from transformer.data.corpus import DataError, load_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the `datasets` library's own cache inside the test's directory."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "extracted")


def write(path: Path, text: str) -> Path:
    """Write `text` byte for byte (no newline translation), gzipped when the name ends in .gz."""
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def table(path: Path, **fields: str) -> CorpusConfig:
    return CorpusConfig(format="table", path=str(path), **fields)


def pairs(corpus: CorpusConfig) -> list[tuple[str, str]]:
    dataset = load_corpus(corpus, "data.train")
    return list(zip(dataset["src"], dataset["tgt"], strict=True))


def train_config(tmp_path: Path, train: dict) -> Path:
    """A valid tiny training config whose training corpus is `train`."""
    config = {
        "model": {"d_model": 32, "num_heads": 2, "d_ff": 64},
        "tokenizer": {"vocab_size": 100},
        "data": {"train": train, "cache_dir": str(tmp_path / "cache")},
        "training": {"device": "cpu", "max_steps": 2, "progress_bar": False},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def corpus_settings(corpus: CorpusConfig) -> dict:
    """The YAML mapping of a corpus config: only the keys its format uses."""
    if corpus.format == "text":
        return {"format": "text", "src_path": corpus.src_path, "tgt_path": corpus.tgt_path}
    return {
        "format": "table",
        "path": corpus.path,
        "src_field": corpus.src_field,
        "tgt_field": corpus.tgt_field,
    }


@pytest.fixture
def train(tmp_path: Path, capsys: pytest.CaptureFixture) -> Callable[[CorpusConfig], tuple]:
    """Run transformer-train in this process on a corpus; its exit code and standard error."""

    def call(corpus: CorpusConfig) -> tuple[int, str]:
        config = train_config(tmp_path, corpus_settings(corpus))
        capsys.readouterr()
        code = train_main(["--config", str(config), "--run-dir", str(tmp_path / "run")])
        return code, capsys.readouterr().err

    return call


def the_error_line(code: int, stderr: str) -> str:
    """The one `error:` line of a failed command (exit code 2, no traceback)."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# --------------------------------------------------------------------------- no pairs

EMPTY_TABLES = {
    "empty.jsonl": "",
    "empty.tsv": "",
    "empty.csv": "",
    "header-only.csv": "src,tgt\n",
    "header-only.tsv": "src\ttgt\n",
    "blank-lines.jsonl": "\n\n  \n",
    "blank-lines.tsv": "\n\n",
    "header-and-blank-lines.csv": "src,tgt\r\n\r\n\r\n",
}


def empty_input(tmp_path: Path, name: str) -> tuple[CorpusConfig, list[Path]]:
    """A corpus with no pairs: a table from EMPTY_TABLES, or two text files of blank lines."""
    if name == "blank-lines text pair":
        src, tgt = write(tmp_path / "a.en", "\n\n"), write(tmp_path / "a.de", "\n\n")
        corpus = CorpusConfig(format="text", src_path=str(src), tgt_path=str(tgt))
        return corpus, [src, tgt]
    path = write(tmp_path / name, EMPTY_TABLES[name])
    return table(path), [path]


@pytest.mark.parametrize("name", [*EMPTY_TABLES, "blank-lines text pair"])
def test_an_input_without_pairs_is_an_error_naming_the_file(tmp_path: Path, name: str) -> None:
    corpus, paths = empty_input(tmp_path, name)
    with pytest.raises(DataError) as caught:
        load_corpus(corpus, "data.train")
    message = str(caught.value)
    assert message.startswith("data.train: no sentence pairs in ")
    assert all(str(path) in message for path in paths), message


@pytest.mark.parametrize("name", [*EMPTY_TABLES, "blank-lines text pair"])
def test_training_on_an_input_without_pairs_is_one_error_line(
    tmp_path: Path, name: str, train: Callable[[CorpusConfig], tuple]
) -> None:
    corpus, paths = empty_input(tmp_path, name)
    line = the_error_line(*train(corpus))
    assert "no sentence pairs in " in line
    assert all(str(path) in line for path in paths), line


def test_an_empty_jsonl_is_one_error_line_from_the_train_program(tmp_path: Path) -> None:
    """The real `python -m transformer.cli.train` (the StopIteration case of issue 23)."""
    path = write(tmp_path / "train.jsonl", "")
    config = train_config(tmp_path, corpus_settings(table(path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "transformer.cli.train", "--config", str(config)]
    argv += ["--run-dir", str(tmp_path / "run")]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240)
    line = the_error_line(result.returncode, result.stderr)
    assert line == (
        f"error: data.train: no sentence pairs in {path}: no row with text; "
        "a corpus needs at least one pair with text on both sides"
    )


# --------------------------------------------------------------------------- malformed tables

# name, content, the line (or array item) at fault, a fragment of the cause
MALFORMED = [
    ("quoted-tab.tsv", 'src\ttgt\nok\tfine\na "b\tc" d\te\n', "line 3", "3 columns"),
    ("quoted-newline.tsv", 'src\ttgt\n"Hallo\nWelt"\thello\n', "line 2", "1 column"),
    ("trailing-tab.tsv.gz", "src\ttgt\na\tb\t\n", "line 2", "3 columns"),
    ("bad-utf8.tsv", "src\ttgt\na\tb\nc\t\udcff\n", "line 3", "not valid UTF-8"),
    ("extra-field.csv", "src,tgt\na,b\nJa, gut.,Yes\n", "line 3", "3 columns"),
    ("unclosed-quote.csv", 'src,tgt\na,b\n"open,x\nmore\n', "line 3", "not valid CSV"),
    ("text-after-quote.csv", 'src,tgt\n"a\nb"c,d\n', "line 2", "not valid CSV"),
    ("array-line.jsonl", '{"src": "a", "tgt": "b"}\n[1, 2]\n', "line 2", "JSON array, not an"),
    ("broken.jsonl", '{"src": "a", "tgt": "b"}\n\n{"src": "a", tgt}\n', "line 3", "not valid JSON"),
    ("no-tgt.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a"}\n', "line 2", "no field 'tgt'"),
    ("number.jsonl", '{"src": 12, "tgt": "twelve"}\n', "line 1", "JSON number, not text"),
    ("array-item.json", '[{"src": "a", "tgt": "b"},\n 5]\n', "item 2", "JSON number, not an"),
]
MALFORMED_IDS = [case[0] for case in MALFORMED]


def malformed(tmp_path: Path, name: str, content: str) -> Path:
    if "\udcff" in content:  # a byte that is not UTF-8
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
        return path
    return write(tmp_path / name, content)


@pytest.mark.parametrize(("name", "content", "where", "cause"), MALFORMED, ids=MALFORMED_IDS)
def test_a_malformed_table_is_an_error_naming_file_line_and_cause(
    tmp_path: Path, name: str, content: str, where: str, cause: str
) -> None:
    path = malformed(tmp_path, name, content)
    with pytest.raises(DataError) as caught:
        load_corpus(table(path), "data.train")
    message = str(caught.value)
    assert message.startswith("data.train")
    assert f"{path}: {where}" in message and cause in message, message


@pytest.mark.parametrize(("name", "content", "where", "cause"), MALFORMED, ids=MALFORMED_IDS)
def test_training_on_a_malformed_table_is_one_error_line(
    tmp_path: Path,
    name: str,
    content: str,
    where: str,
    cause: str,
    train: Callable[[CorpusConfig], tuple],
) -> None:
    path = malformed(tmp_path, name, content)
    line = the_error_line(*train(table(path)))
    assert f"{path}: {where}" in line and cause in line, line


def test_a_quoted_newline_in_a_tsv_cannot_shift_text_into_another_pair(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", 'src\ttgt\n"Hallo\nWelt"\thello\nzwei\ttwo\n')
    with pytest.raises(DataError, match="line 2 has 1 column but the header"):
        load_corpus(table(path), "data.train")


def test_a_missing_column_names_the_setting_and_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "de,en\nHaus,house\n")
    with pytest.raises(DataError) as caught:
        load_corpus(table(path, src_field="de", tgt_field="fr"), "data.valid")
    assert str(caught.value) == (
        f"data.valid.tgt_field: {path}: the header (line 1) has no column 'fr'; "
        "its columns are: de, en"
    )


# --------------------------------------------------------------------------- valid tables


def test_tsv_quotes_and_commas_are_plain_text(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", 'de\ten\n"a b"\t"c"\nx, "y"\tz\n')
    assert pairs(table(path, src_field="de", tgt_field="en")) == [
        ('"a b"', '"c"'),
        ('x, "y"', "z"),
    ]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_valid_tables_load_their_pairs_in_file_order(tmp_path: Path, suffix: str) -> None:
    csv_text = (
        "\ufeffde,en,id\r\n"
        '"Ja, gut.","Yes, good.",1\r\n'
        "\r\n"
        '"Er sagte ""Hallo""",He said "hello",2\r\n'
        '"zwei\nZeilen",two lines,3\r\n'
        ",empty side,4\r\n"
        "NA,null,5\r\n"
    )
    flat = {"src_field": "de", "tgt_field": "en"}
    assert pairs(table(write(tmp_path / f"t.csv{suffix}", csv_text), **flat)) == [
        ("Ja, gut.", "Yes, good."),
        ('Er sagte "Hallo"', 'He said "hello"'),
        ("zwei\nZeilen", "two lines"),
        ("NA", "null"),
    ]
    tsv_text = "id\tde\ten\n1\t007\t3.50\n\n2\t  Haus \thouse\r\n3\tnur\t\n"
    tsv_pairs = [("007", "3.50"), ("Haus", "house")]
    assert pairs(table(write(tmp_path / f"t.tsv{suffix}", tsv_text), **flat)) == tsv_pairs
    records = [
        {"translation": {"de": "Das Haus", "en": "The house"}, "id": 1},
        {"translation": {"de": "leer", "en": None}},
        {"translation": {"de": "Die Straße", "en": "The street"}, "extra": [1, 2]},
    ]
    jsonl = "".join(json.dumps(r, ensure_ascii=False) + "\n\n" for r in records)
    nested = {"src_field": "translation.de", "tgt_field": "translation.en"}
    expected = [("Das Haus", "The house"), ("Die Straße", "The street")]
    assert pairs(table(write(tmp_path / f"t.jsonl{suffix}", jsonl), **nested)) == expected
    array = json.dumps(records, ensure_ascii=False, indent=1)
    assert pairs(table(write(tmp_path / f"t.json{suffix}", array), **nested)) == expected
