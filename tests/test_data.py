"""Corpora through `datasets`, tokenizing with a cache, and collating an encoded corpus."""

from __future__ import annotations

import gzip
import json
import logging
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from transformer.config import CorpusConfig, TokenizerConfig
from transformer.data.batching import TokenBatchSampler, collate
from transformer.data.corpus import (
    DataError,
    EncodedCorpus,
    encode_corpus,
    iter_sentences,
    load_corpus,
)
from transformer.data.tokenizer import EOS_ID, Tokenizer, TokenizerPair, train_tokenizers
from transformer.errors import UserError

GERMAN = "der die das Haus Straße groß klein über schön Mädchen läuft schnell heute 12 2024"
ENGLISH = "the a house street big small over beautiful girl runs quickly today 12 2024"


def sentences(vocabulary: str, count: int, seed: int, most: int = 12) -> list[str]:
    """`count` random sentences of 1 to `most` words of `vocabulary`."""
    rng = random.Random(seed)
    words = vocabulary.split()
    return [" ".join(rng.choices(words, k=rng.randint(1, most))) for _ in range(count)]


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write one line per sentence, gzip-compressed when the name ends in .gz."""
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pairs(dataset: datasets.Dataset) -> list[tuple[str, str]]:
    return list(zip(dataset["src"], dataset["tgt"], strict=True))


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the `datasets` library's own cache inside the test's directory."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "extracted")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> TokenizerPair:
    """A tiny joint SentencePiece model for German and English test sentences."""
    config = TokenizerConfig(vocab_size=60, max_training_sentences=10_000)
    src, tgt = sentences(GERMAN, 300, seed=1), sentences(ENGLISH, 300, seed=2)
    return train_tokenizers(config, src, tgt, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def corpus_files(tmp_path: Path) -> tuple[Path, Path, list[str], list[str]]:
    src, tgt = sentences(GERMAN, 200, seed=3), sentences(ENGLISH, 200, seed=4)
    return write_lines(tmp_path / "c.de", src), write_lines(tmp_path / "c.en", tgt), src, tgt


def text_corpus(src_path: Path, tgt_path: Path) -> CorpusConfig:
    return CorpusConfig(format="text", src_path=str(src_path), tgt_path=str(tgt_path))


# --------------------------------------------------------------------------- loading


def test_text_pair_loads_plain_and_gzip_files_alike(tmp_path: Path) -> None:
    src = ["Die Straße ist groß.", "Über 12 Mädchen!", "„Zitat“ – Ende"]
    tgt = ["The street is big.", "Over 12 girls!", '"Quote" - end']
    plain = load_corpus(
        text_corpus(write_lines(tmp_path / "a.de", src), write_lines(tmp_path / "a.en", tgt)), "k"
    )
    zipped = load_corpus(
        text_corpus(write_lines(tmp_path / "b.de.gz", src), write_lines(tmp_path / "b.en.gz", tgt)),
        "k",
    )
    assert pairs(plain) == pairs(zipped) == list(zip(src, tgt, strict=True))


def test_text_lines_split_on_newline_only_and_lose_surrounding_whitespace(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_bytes("\ufeffeins\r\n  zwei\u2028halb  \nletzte".encode())
    (tmp_path / "a.en").write_bytes(b"one\r\ntwo\tand a half\nlast\n")
    dataset = load_corpus(text_corpus(tmp_path / "a.de", tmp_path / "a.en"), "k")
    assert pairs(dataset) == [
        ("eins", "one"),
        ("zwei\u2028halb", "two\tand a half"),
        ("letzte", "last"),
    ]


def test_different_line_counts_error_names_both_files_and_counts(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "a.de", ["eins", "zwei", "drei"])
    tgt = write_lines(tmp_path / "a.en", ["one", "two"])
    with pytest.raises(DataError) as caught:
        load_corpus(text_corpus(src, tgt), "data.train")
    message = str(caught.value)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message and "has 2" in message


def test_missing_text_file_error_names_key_and_path(tmp_path: Path) -> None:
    tgt = write_lines(tmp_path / "a.en", ["one"])
    with pytest.raises(DataError, match="data.valid.src_path") as caught:
        load_corpus(text_corpus(tmp_path / "absent.de", tgt), "data.valid")
    assert str(tmp_path / "absent.de") in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_non_utf8_text_error_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_bytes("gut\nauch gut\nschlecht: \xe4\n".encode("latin-1"))
    tgt = write_lines(tmp_path / "a.en", ["good", "also good", "bad"])
    with pytest.raises(DataError, match="line 3 is not valid UTF-8") as caught:
        load_corpus(text_corpus(tmp_path / "a.de", tgt), "k")
    assert str(tmp_path / "a.de") in str(caught.value)


def test_tsv_table_keeps_quotes_and_number_like_text_verbatim(tmp_path: Path) -> None:
    rows = [
        ("id", "de", "en"),
        ("1", '"Hallo" Welt', "NA"),
        ("2", "007", "3.50"),
        ("3", "a,b", "c"),
    ]
    lines = ["\t".join(row) for row in rows]
    for name in ("t.tsv", "t.tsv.gz"):
        corpus = CorpusConfig(
            format="table",
            path=str(write_lines(tmp_path / name, lines)),
            src_field="de",
            tgt_field="en",
        )
        assert pairs(load_corpus(corpus, "k")) == [row[1:] for row in rows[1:]]


def test_csv_table_reads_quoted_fields(tmp_path: Path) -> None:
    lines = ["src,tgt", '"Ja, gut.","Yes, good."', '"Er sagte ""Hallo""",He said "hello"']
    corpus = CorpusConfig(format="table", path=str(write_lines(tmp_path / "t.csv", lines)))
    assert pairs(load_corpus(corpus, "k")) == [
        ("Ja, gut.", "Yes, good."),
        ('Er sagte "Hallo"', 'He said "hello"'),
    ]


def test_jsonl_table_selects_nested_fields_by_dotted_path(tmp_path: Path) -> None:
    records = [
        {"id": 1, "translation": {"de": "Das Haus", "en": "The house"}},
        {"id": 2, "translation": {"de": "Die Straße", "en": "The street"}},
    ]
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    for name in ("t.jsonl", "t.jsonl.gz"):
        corpus = CorpusConfig(
            format="table",
            path=str(write_lines(tmp_path / name, lines)),
            src_field="translation.de",
            tgt_field="translation.en",
        )
        assert pairs(load_corpus(corpus, "k")) == [
            ("Das Haus", "The house"),
            ("Die Straße", "The street"),
        ]


def test_missing_column_error_lists_the_columns_that_exist(tmp_path: Path) -> None:
    lines = [json.dumps({"id": 1, "translation": {"de": "Haus", "en": "house"}})]
    path = write_lines(tmp_path / "t.jsonl", lines)
    corpus = CorpusConfig(format="table", path=str(path), src_field="translation.fr")
    with pytest.raises(DataError, match="data.train.src_field") as caught:
        load_corpus(corpus, "data.train")
    message = str(caught.value)
    assert "'translation.fr'" in message
    assert "id, translation.de, translation.en" in message


def test_unknown_table_type_is_a_data_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "t.xlsx", ["x"])
    with pytest.raises(DataError, match="data.train.path: cannot tell the table type"):
        load_corpus(CorpusConfig(format="table", path=str(path)), "data.train")


def test_hub_format_loads_the_split_of_a_local_dataset_directory(tmp_path: Path) -> None:
    root = tmp_path / "wmt-like"
    (root / "data").mkdir(parents=True)
    for split, words in (("train", ["Haus", "Straße"]), ("validation", ["Mädchen"])):
        records = [{"translation": {"de": w, "en": f"<{w}>"}} for w in words]
        write_lines(
            root / "data" / f"{split}-00000-of-00001.jsonl",
            [json.dumps(r, ensure_ascii=False) for r in records],
        )
    corpus = CorpusConfig(
        format="hub",
        name=str(root),
        split="validation",
        src_field="translation.de",
        tgt_field="translation.en",
    )
    assert pairs(load_corpus(corpus, "data.valid")) == [("Mädchen", "<Mädchen>")]


def test_hub_dataset_that_cannot_be_loaded_is_a_data_error_with_the_reason(
    tmp_path: Path,
) -> None:
    corpus = CorpusConfig(format="hub", name=str(tmp_path / "no-such-dataset"))
    with pytest.raises(DataError) as caught:
        load_corpus(corpus, "data.train")
    message = str(caught.value)
    assert message.startswith("data.train: could not load dataset ")
    assert "from the Hugging Face Hub: " in message and "no-such-dataset" in message


def test_empty_pairs_are_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_lines(tmp_path / "a.de", ["eins", "", "drei", "  ", "fünf"])
    tgt = write_lines(tmp_path / "a.en", ["one", "two", "", "four", " five "])
    with caplog.at_level(logging.INFO, logger="transformer.data.corpus"):
        dataset = load_corpus(text_corpus(src, tgt), "data.train")
    assert pairs(dataset) == [("eins", "one"), ("fünf", "five")]
    assert "data.train: skipped 3 of 5 pairs with an empty side" in caplog.text


def test_iter_sentences_yields_a_column_in_order(tmp_path: Path) -> None:
    src, tgt = sentences(GERMAN, 120, seed=11), sentences(ENGLISH, 120, seed=12)
    dataset = datasets.Dataset.from_dict({"src": src, "tgt": tgt}).select(range(119, -1, -1))
    assert list(iter_sentences(dataset, "src")) == src[::-1]
    assert list(iter_sentences(dataset, "tgt")) == tgt[::-1]


# --------------------------------------------------------------------------- encoding


def small_dataset(src: list[str], tgt: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"src": src, "tgt": tgt})


def test_encoded_sides_end_with_eos_and_decode_to_the_text(tokenizers: TokenizerPair) -> None:
    src, tgt = sentences(GERMAN, 50, seed=5), sentences(ENGLISH, 50, seed=6)
    encoded = encode_corpus(small_dataset(src, tgt), tokenizers, 1000, 1000.0, filter=False)
    assert len(encoded) == 50
    assert list(encoded.src_texts) == src and list(encoded.tgt_texts) == tgt
    assert encoded.tgt_texts[-1] == tgt[-1] and encoded.src_texts[2:5] == src[2:5]
    for i in range(50):
        example = encoded[i]
        assert example.src[-1] == EOS_ID and example.tgt[-1] == EOS_ID
        assert EOS_ID not in example.src[:-1] and EOS_ID not in example.tgt[:-1]
        assert tokenizers.src.decode(example.src) == src[i] == encoded.src_texts[i]
        assert tokenizers.tgt.decode(example.tgt) == tgt[i] == encoded.tgt_texts[i]
        assert encoded.src_lengths[i] == len(example.src)
        assert encoded.tgt_lengths[i] == len(example.tgt)


def test_length_filter_drops_long_and_unbalanced_pairs_only(tokenizers: TokenizerPair) -> None:
    short = ("das Haus", "the house")
    long = (" ".join(["Mädchen"] * 40), " ".join(["girl"] * 40))
    unbalanced = ("Haus", "the big beautiful house over the small street")
    tokens = [len(tokenizers.src.encode(text)) + 1 for text in (*long, *unbalanced)]
    assert min(tokens[:2]) > 20 and tokens[3] > 3 * tokens[2]  # what the test relies on
    dataset = small_dataset(*zip(short, long, unbalanced, short, strict=True))
    filtered = encode_corpus(dataset, tokenizers, max_length=20, max_length_ratio=3.0)
    assert list(filtered.tgt_texts) == ["the house", "the house"]
    assert max(filtered.src_lengths.max(), filtered.tgt_lengths.max()) <= 20
    everything = encode_corpus(dataset, tokenizers, 20, 3.0, filter=False)
    assert len(everything) == 4


def test_second_encoding_with_the_same_tokenizer_comes_from_the_cache(
    tmp_path: Path,
    tokenizers: TokenizerPair,
    corpus_files: tuple[Path, Path, list[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = text_corpus(*corpus_files[:2])
    first = encode_corpus(load_corpus(corpus, "k"), tokenizers, 10, 2.0, tmp_path / "cache")

    def no_tokenizing(self: Tokenizer, texts: list[str]) -> list[list[int]]:
        raise AssertionError("tokenized again although the cache holds the result")

    monkeypatch.setattr(Tokenizer, "encode_batch", no_tokenizing)
    second = encode_corpus(load_corpus(corpus, "k"), tokenizers, 10, 2.0, tmp_path / "cache")
    assert 0 < len(second) == len(first) < 200  # the filter dropped some pairs
    for i in range(len(first)):
        assert np.array_equal(first[i].src, second[i].src)
        assert np.array_equal(first[i].tgt, second[i].tgt)
        assert first.tgt_texts[i] == second.tgt_texts[i]


def test_cache_is_not_reused_when_text_or_filter_settings_change(
    tmp_path: Path, tokenizers: TokenizerPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = Tokenizer.encode_batch

    def counting(self: Tokenizer, texts: list[str]) -> list[list[int]]:
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_batch", counting)
    src, tgt = sentences(GERMAN, 30, seed=7), sentences(ENGLISH, 30, seed=8)
    cache = tmp_path / "cache"
    encode_corpus(small_dataset(src, tgt), tokenizers, 10, 2.0, cache)
    encode_corpus(small_dataset(src, tgt), tokenizers, 10, 2.0, cache)
    assert len(calls) == 2  # one call per side, then a cache hit
    encode_corpus(small_dataset(src, tgt), tokenizers, 11, 2.0, cache)
    encode_corpus(small_dataset(src[:-1] + ["anders"], tgt), tokenizers, 10, 2.0, cache)
    assert len(calls) == 6
    assert len(list(cache.glob("encoded-*.npz"))) == 3


def test_interrupted_cache_write_leaves_no_file_behind(
    tmp_path: Path, tokenizers: TokenizerPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(file: object, **arrays: np.ndarray) -> None:
        file.write(b"half a cache file")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    dataset = small_dataset(["das Haus"], ["the house"])
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(dataset, tokenizers, 10, 2.0, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# --------------------------------------------------------------------------- collating


def test_corpus_collate_equals_collate_of_its_examples(tokenizers: TokenizerPair) -> None:
    src, tgt = sentences(GERMAN, 80, seed=9), sentences(ENGLISH, 80, seed=10)
    encoded: EncodedCorpus = encode_corpus(small_dataset(src, tgt), tokenizers, 100, 100.0)
    sampler = TokenBatchSampler(encoded.src_lengths, encoded.tgt_lengths, 120, seed=0)
    for indices in sampler.batches(0):
        fast = encoded.collate(indices)
        slow = collate([encoded[i] for i in indices])
        for name in ("src", "tgt_in", "tgt_out"):
            assert torch.equal(getattr(fast, name), getattr(slow, name))
        assert fast.indices == slow.indices == indices
        assert fast.num_target_tokens == slow.num_target_tokens
        assert fast.num_target_tokens == int(encoded.tgt_lengths[indices].sum())
