"""Corpora through `datasets`, tokenizing with a cache, and token-budget batching."""

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
from transformer.data import (
    DataError,
    EncodedCorpus,
    Example,
    TokenBatchSampler,
    collate,
    encode_corpus,
    iter_sentences,
    load_corpus,
)
from transformer.errors import UserError
from transformer.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TokenizerPair, train_tokenizers

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
    with caplog.at_level(logging.INFO, logger="transformer.data"):
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


# --------------------------------------------------------------------------- batching


def random_lengths(count: int, seed: int, most: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(1, most, count), rng.integers(1, most, count)


def batch_cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    """Tokens of the larger padded tensor of a batch: size * longest sequence in it."""
    return len(batch) * int(max(src[batch].max(), tgt[batch].max()))


@pytest.mark.parametrize("batch_tokens", [60, 200, 1000])
def test_batches_fit_the_token_budget_with_padding_and_cover_each_example_once(
    batch_tokens: int,
) -> None:
    src, tgt = random_lengths(500, seed=1)
    sampler = TokenBatchSampler(src, tgt, batch_tokens, seed=3)
    for epoch in range(3):
        batches = sampler.batches(epoch)
        assert all(batch_cost(b, src, tgt) <= batch_tokens for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(500))


def test_batches_are_filled_close_to_the_budget() -> None:
    src, tgt = random_lengths(2000, seed=2, most=30)
    batches = TokenBatchSampler(src, tgt, 1000, seed=0).batches(0)
    costs = [batch_cost(b, src, tgt) for b in batches]
    assert np.mean(costs) > 0.9 * 1000


def test_example_over_the_budget_gets_a_batch_of_its_own_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = np.array([5, 300, 5, 6, 250])
    tgt = np.array([5, 10, 6, 5, 5])
    sampler = TokenBatchSampler(src, tgt, 100, seed=0)
    with caplog.at_level(logging.WARNING, logger="transformer.data"):
        first, second = sampler.batches(0), sampler.batches(1)
    assert [1] in first and [4] in first and [1] in second
    assert caplog.text.count("longer than batch_tokens 100") == 1
    assert "the longest has 300 tokens" in caplog.text


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sharded_batches_cover_everything_without_overlap_in_equal_numbers(
    world_size: int,
) -> None:
    src, tgt = random_lengths(301, seed=4)
    for epoch in range(3):
        shards = [
            TokenBatchSampler(src, tgt, 250, seed=9, rank=r, world_size=world_size).batches(epoch)
            for r in range(world_size)
        ]
        assert len({len(shard) for shard in shards}) == 1
        seen = [i for shard in shards for batch in shard for i in batch]
        assert sorted(seen) == list(range(301))
        assert all(batch_cost(b, src, tgt) <= 250 for shard in shards for b in shard)


def test_one_rank_gets_every_batch_of_the_unsharded_order() -> None:
    src, tgt = random_lengths(300, seed=5)
    single = TokenBatchSampler(src, tgt, 400, seed=1).batches(0)
    assert len(single) % 2 == 0  # so sharding in two splits nothing
    halves = [TokenBatchSampler(src, tgt, 400, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert halves[0].batches(0) == single[0::2] and halves[1].batches(0) == single[1::2]


def test_batches_are_reshuffled_each_epoch_but_deterministic_for_a_seed() -> None:
    src, tgt = random_lengths(400, seed=6)
    one = TokenBatchSampler(src, tgt, 300, seed=5)
    two = TokenBatchSampler(src, tgt, 300, seed=5)
    other_seed = TokenBatchSampler(src, tgt, 300, seed=6)
    assert one.batches(0) == two.batches(0) and one.batches(3) == two.batches(3)
    assert one.batches(0) != one.batches(1)
    assert one.batches(0) != other_seed.batches(0)


def test_equal_length_examples_are_grouped_differently_each_epoch() -> None:
    src, tgt = random_lengths(400, seed=6, most=8)  # many ties in length
    sampler = TokenBatchSampler(src, tgt, 40, seed=5)
    groups = [{tuple(sorted(b)) for b in sampler.batches(epoch)} for epoch in (0, 1)]
    assert groups[0] != groups[1]


def test_iteration_and_length_follow_set_epoch() -> None:
    src, tgt = random_lengths(200, seed=7)
    sampler = TokenBatchSampler(src, tgt, 300, seed=2)
    sampler.set_epoch(4)
    assert list(sampler) == sampler.batches(4) and len(sampler) == len(sampler.batches(4))
    sampler.set_epoch(5)
    assert list(sampler) == sampler.batches(5)


def test_unshuffled_batches_come_in_length_order_for_any_epoch() -> None:
    src, tgt = random_lengths(200, seed=8)
    sampler = TokenBatchSampler(src, tgt, 300, shuffle=False)
    batches = sampler.batches(0)
    assert batches == sampler.batches(7)
    order = [i for b in batches for i in b]
    costs = np.maximum(src, tgt)[order]
    assert sorted(order) == list(range(200)) and np.all(np.diff(costs) >= 0)


def test_collate_pads_source_and_shifts_target_behind_bos() -> None:
    examples = [
        Example(7, np.array([11, 12, EOS_ID], np.int32), np.array([21, EOS_ID], np.int32)),
        Example(3, np.array([13, EOS_ID], np.int32), np.array([22, 23, 24, EOS_ID], np.int32)),
    ]
    batch = collate(examples, PAD_ID)
    P, E, B = PAD_ID, EOS_ID, BOS_ID
    assert batch.src.tolist() == [[11, 12, E], [13, E, P]]
    assert batch.tgt_in.tolist() == [[B, 21, P, P], [B, 22, 23, 24]]
    assert batch.tgt_out.tolist() == [[21, E, P, P], [22, 23, 24, E]]
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.int64
    assert batch.indices == [7, 3] and batch.num_target_tokens == 6 and len(batch) == 2


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


def test_batch_to_device_keeps_every_field() -> None:
    example = Example(0, np.array([5, EOS_ID], np.int32), np.array([6, EOS_ID], np.int32))
    batch = collate([example])
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.src, batch.src) and torch.equal(moved.tgt_out, batch.tgt_out)
    assert moved.indices == [0] and moved.num_target_tokens == 2
