"""SentencePiece tokenizers: training, fixed special ids, files on disk, reuse, errors."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import sentencepiece as spm

from transformer.config import ConfigError, ModelConfig, TokenizerConfig
from transformer.data.tokenizer import (
    BOS_ID,
    BOS_PIECE,
    EOS_ID,
    EOS_PIECE,
    PAD_ID,
    PAD_PIECE,
    UNK_ID,
    UNK_PIECE,
    Tokenizer,
    TokenizerError,
    load_tokenizers,
    train_tokenizers,
    with_vocabulary_sizes,
)
from transformer.errors import UserError

GERMAN = (
    "der die das Haus Straße Größe über schön Mädchen läuft Bäume Füße groß heißt Öl "
    "Übung Ärger und nicht mit sie wir ist war 12 345 2024 3,5 7.25 km Uhr Stadt Land Fluss "
    "Wasser Feuer Himmel gestern morgen heute Abend Nacht schreiben lesen sprechen hören "
    "Zeitung Bahnhof Flughafen Regierung Vorschlag Entscheidung wichtig schwierig"
)
ENGLISH = (
    "the a house street size over beautiful girl runs trees feet big is called oil "
    "exercise anger and not with she we was 12 345 2024 3.5 7.25 km o'clock city country "
    "river water fire sky yesterday tomorrow today evening night write read speak hear "
    "newspaper station airport government proposal decision important difficult"
)
PUNCTUATION = [",", ".", "!", "?", ":", ";", "(", ")", "-", "–", "„", "“", '"', "%", "€"]

ROUND_TRIP = [
    "Die Straße ist 12,5 km lang.",
    "Das Mädchen läuft über die Füße – schön!",
    "„Größe“ heißt: 345 Bäume (2024)?",
    "Öl und Ärger; Übung 7.25 % mit 3,5 €.",
    "the girl runs over 12 streets, doesn't she?",
]


def sentences(vocabulary: str, count: int, seed: int) -> list[str]:
    """`count` random sentences of 3-12 words of `vocabulary`, each with a punctuation mark."""
    rng = random.Random(seed)
    words = vocabulary.split()
    result = []
    for _ in range(count):
        tokens = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        tokens.append(rng.choice(PUNCTUATION))
        result.append(" ".join(tokens))
    return result


def tiny_config(**changes: object) -> TokenizerConfig:
    """A small vocabulary that a few hundred sentences can fill."""
    values: dict[str, object] = {"vocab_size": 120, "max_training_sentences": 10_000}
    values.update(changes)
    return TokenizerConfig(**values)


def never_read() -> object:
    """An iterable that fails the test if anybody reads from it."""
    yield pytest.fail("the training text was read although a model file was given")


@pytest.fixture
def corpus() -> tuple[list[str], list[str]]:
    """Source (German) and target (English) text covering every character of ROUND_TRIP."""
    src = sentences(GERMAN, 300, seed=1) + ROUND_TRIP[:4]
    tgt = sentences(ENGLISH, 300, seed=2) + ROUND_TRIP[4:]
    return src, tgt


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_decode_of_encode_gives_back_ordinary_text_exactly(
    tmp_path: Path, corpus: tuple[list[str], list[str]], kind: str
) -> None:
    src, tgt = corpus
    pair = train_tokenizers(tiny_config(kind=kind), src, tgt, tmp_path)
    for text in ROUND_TRIP + src[:50] + tgt[:50]:
        ids = pair.src.encode(text)
        assert UNK_ID not in ids, text
        assert pair.src.decode(ids) == text


def test_special_ids_are_pad0_unk1_bos2_eos3(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    pair = train_tokenizers(tiny_config(), *corpus, tmp_path)
    pieces = [pair.src.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
    assert pieces == [PAD_PIECE, UNK_PIECE, BOS_PIECE, EOS_PIECE]
    assert UNK_ID in pair.src.encode("ЖЖЖ")


def test_encode_adds_no_specials_and_decode_skips_them(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    pair = train_tokenizers(tiny_config(), *corpus, tmp_path)
    text = ROUND_TRIP[1]
    ids = pair.src.encode(text)
    assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)
    assert pair.src.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text
    assert pair.src.decode_batch([[BOS_ID, *ids, EOS_ID], ids]) == [text, text]


def test_encode_batch_equals_encode_one_by_one(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    pair = train_tokenizers(tiny_config(), *corpus, tmp_path)
    texts = corpus[0][:40]
    assert pair.src.encode_batch(texts) == [pair.src.encode(t) for t in texts]


def test_joint_training_writes_one_shared_model_and_nothing_else(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    pair = train_tokenizers(tiny_config(joint=True), *corpus, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["spm.model"]
    assert pair.joint and pair.src is pair.tgt
    assert pair.src.vocab_size == 120
    assert pair.src.path == tmp_path / "run" / "spm.model"


def test_separate_training_writes_src_and_tgt_models_from_their_own_text(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    pair = train_tokenizers(tiny_config(joint=False), *corpus, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.model", "tgt.model"]
    assert not pair.joint and pair.src is not pair.tgt
    # "ß" occurs only in the German source text, "'" only in the English target text.
    assert UNK_ID not in pair.src.encode("Straße") and UNK_ID in pair.tgt.encode("ß")
    assert UNK_ID not in pair.tgt.encode("o'clock") and UNK_ID in pair.src.encode("'")


def test_load_tokenizers_finds_what_training_wrote(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    for joint in (True, False):
        out = tmp_path / str(joint)
        trained = train_tokenizers(tiny_config(joint=joint), *corpus, out)
        loaded = load_tokenizers(out)
        assert loaded.joint == joint and (loaded.src is loaded.tgt) == joint
        for before, after in ((trained.src, loaded.src), (trained.tgt, loaded.tgt)):
            assert after.encode(ROUND_TRIP[0]) == before.encode(ROUND_TRIP[0])


def test_switching_layout_in_the_same_directory_removes_the_old_models(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    train_tokenizers(tiny_config(joint=False), *corpus, tmp_path)
    pair = train_tokenizers(tiny_config(joint=True), *corpus, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm.model"]
    assert load_tokenizers(tmp_path).joint and pair.joint


def test_given_model_file_is_copied_instead_of_training(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    train_tokenizers(tiny_config(), *corpus, tmp_path / "first")
    given = tmp_path / "first" / "spm.model"
    pair = train_tokenizers(
        tiny_config(model_file=str(given)), never_read(), never_read(), tmp_path / "second"
    )
    assert (tmp_path / "second" / "spm.model").read_bytes() == given.read_bytes()
    assert pair.joint and pair.src.path == tmp_path / "second" / "spm.model"


def test_given_model_file_inside_the_run_directory_is_kept(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    train_tokenizers(tiny_config(), *corpus, tmp_path)
    before = (tmp_path / "spm.model").read_bytes()
    config = tiny_config(model_file=str(tmp_path / "spm.model"))
    train_tokenizers(config, never_read(), never_read(), tmp_path)
    assert (tmp_path / "spm.model").read_bytes() == before


def test_given_separate_model_files_are_copied_under_src_and_tgt_names(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    train_tokenizers(tiny_config(joint=False), *corpus, tmp_path / "first")
    config = tiny_config(
        src_model_file=str(tmp_path / "first" / "src.model"),
        tgt_model_file=str(tmp_path / "first" / "tgt.model"),
    )
    pair = train_tokenizers(config, never_read(), never_read(), tmp_path / "second")
    assert not pair.joint
    for name in ("src.model", "tgt.model"):
        copied = (tmp_path / "second" / name).read_bytes()
        assert copied == (tmp_path / "first" / name).read_bytes()


def test_missing_given_model_file_error_names_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "spm.model"
    with pytest.raises(TokenizerError, match="tokenizer.model_file") as caught:
        train_tokenizers(tiny_config(model_file=str(missing)), [], [], tmp_path / "run")
    assert str(missing) in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_missing_or_corrupt_model_file_raises_tokenizer_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found") as caught:
        Tokenizer(tmp_path / "absent.model")
    assert str(tmp_path / "absent.model") in str(caught.value)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    with pytest.raises(TokenizerError, match="not a SentencePiece model") as caught:
        Tokenizer(corrupt)
    assert str(corrupt) in str(caught.value)


def test_load_tokenizers_from_an_empty_directory_says_what_it_expects(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="expected spm.model or src.model and tgt.model"):
        load_tokenizers(tmp_path)


def test_model_with_other_special_ids_is_rejected(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus[0]), model_writer=proto, vocab_size=80, minloglevel=2
    )
    path = tmp_path / "default-ids.model"
    path.write_bytes(proto.getvalue())
    with pytest.raises(TokenizerError, match="other special ids") as caught:
        Tokenizer(path)
    assert str(path) in str(caught.value) and "--pad_id=0" in str(caught.value)


def test_too_small_corpus_gives_a_smaller_vocabulary_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = sentences("ab ba abba", 50, seed=3)
    with caplog.at_level(logging.WARNING, logger="transformer.data.tokenizer"):
        pair = train_tokenizers(tiny_config(vocab_size=500), text, text, tmp_path)
    assert pair.src.vocab_size < 500
    assert f"only supports {pair.src.vocab_size} pieces" in caplog.text
    assert "tokenizer.vocab_size" in caplog.text


def test_vocabulary_smaller_than_the_alphabet_is_a_clear_error(
    tmp_path: Path, corpus: tuple[list[str], list[str]]
) -> None:
    with pytest.raises(TokenizerError, match="tokenizer.vocab_size 10 is too small"):
        train_tokenizers(tiny_config(vocab_size=10), *corpus, tmp_path)


def test_empty_training_text_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="empty"):
        train_tokenizers(tiny_config(), ["", "  "], [], tmp_path)


def test_training_uses_at_most_max_training_sentences_deterministically(
    tmp_path: Path, corpus: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []
    real_train = spm.SentencePieceTrainer.train

    def recording_train(**options: object) -> None:
        sentences_used = list(options.pop("sentence_iterator"))  # type: ignore[call-overload]
        seen.append(sentences_used)
        real_train(sentence_iterator=iter(sentences_used), **options)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", recording_train)
    src, tgt = corpus
    config = tiny_config(max_training_sentences=200)
    train_tokenizers(config, src, tgt, tmp_path / "a")
    train_tokenizers(config, src, tgt, tmp_path / "b")
    assert len(seen[0]) == 200 and set(seen[0]) <= set(src + tgt)
    assert set(seen[0]) & set(src) and set(seen[0]) & set(tgt)
    assert seen[0] == seen[1]
    assert (tmp_path / "a" / "spm.model").read_bytes() == (
        tmp_path / "b" / "spm.model"
    ).read_bytes()


def test_training_prints_nothing_on_stderr(
    tmp_path: Path, corpus: tuple[list[str], list[str]], capfd: pytest.CaptureFixture[str]
) -> None:
    train_tokenizers(tiny_config(joint=False), *corpus, tmp_path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_vocabulary_sizes_come_from_the_tokenizers_and_a_different_given_size_is_named() -> None:
    pair = SimpleNamespace(src=SimpleNamespace(vocab_size=300), tgt=SimpleNamespace(vocab_size=200))
    filled = with_vocabulary_sizes(ModelConfig(), pair)
    assert (filled.src_vocab_size, filled.tgt_vocab_size) == (300, 200)
    with pytest.raises(ConfigError) as info:
        with_vocabulary_sizes(ModelConfig(src_vocab_size=300, tgt_vocab_size=250), pair)
    assert info.value.key == "model.tgt_vocab_size" and "250" in info.value.message
