"""Hugging Face MarianMT folders in and out: `transformer-import --from hf`, built offline.

A tiny MarianMTModel (random weights, seeded) and its tokenizer (two SentencePiece models
trained here on the shipped corpus, a vocab.json built as Marian's) are saved with
`save_pretrained`, imported, and compared with Hugging Face's own computation.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

transformers = pytest.importorskip("transformers")

from tiny_runs import (  # noqa: E402
    PAIRS,
    VOCAB_SIZE,
    make_tiny_run,
    tiny_model_config,
    train_tiny_run,
)

from transformer.cli import export as export_cli  # noqa: E402
from transformer.cli import imports  # noqa: E402
from transformer.config import Config, TokenizerConfig, config_to_dict, save_config  # noqa: E402
from transformer.data.batching import Example, collate  # noqa: E402
from transformer.data.special_ids import PAD_ID  # noqa: E402
from transformer.data.tokenizer import train_tokenizers  # noqa: E402
from transformer.decoding.search import beam_search, greedy_search  # noqa: E402
from transformer.decoding.translator import Translator  # noqa: E402
from transformer.model import Transformer  # noqa: E402
from transformer.training.checkpoint import save_checkpoint  # noqa: E402
from transformer.training.loss import TranslationLoss  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
MAX_NEW = 12


def _train_spm(lines: list[str], vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    return model.getvalue()


def _lines(name: str, count: int) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8").splitlines()[:count]


def _marian_vocab(source: bytes, target: bytes) -> dict[str, int]:
    """Marian's numbering: </s> 0, <unk> 1, the pieces of both models, <pad> last."""
    pieces = ["</s>", "<unk>"]
    for proto in (source, target):
        processor = spm.SentencePieceProcessor(model_proto=proto)
        for i in range(processor.get_piece_size()):
            piece = processor.id_to_piece(i)
            if piece not in pieces and piece not in ("<s>",):
                pieces.append(piece)
    pieces.append("<pad>")
    return {piece: i for i, piece in enumerate(pieces)}


def build_marian_folder(folder: Path, **overrides: object) -> None:
    """A MarianMT folder as save_pretrained writes it: random weights, seeded."""
    folder.mkdir(parents=True)
    source = _train_spm(_lines("train.en", 400), 120)
    target = _train_spm(_lines("train.de", 400), 120)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    vocab = _marian_vocab(source, target)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    pad = vocab["<pad>"]
    settings = dict(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, scale_embedding=True, activation_function="swish",
    )  # fmt: skip
    settings.update(overrides)
    config = transformers.MarianConfig(**settings)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(config)
    tokenizer = transformers.MarianTokenizer(
        str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")
    )
    _fit(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _fit(model: torch.nn.Module, tokenizer: object, steps: int = 150) -> None:
    """A few training steps on the corpus: a random model repeats one token for ever, a
    briefly trained one writes varied outputs that end (what greedy and beam must agree on)."""
    pairs = sorted(zip(_lines("train.en", 2000), _lines("train.de", 2000), strict=True), key=len)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        chunk = pairs[(step * 32) % 384 : (step * 32) % 384 + 32]
        batch = tokenizer(
            [s for s, _ in chunk], text_target=[t for _, t in chunk], return_tensors="pt",
            padding=True,
        )  # fmt: skip
        batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():  # a bias that matters: the import must permute it with the rows
        model.final_logits_bias.normal_(0.0, 0.1)
    model.eval()


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The folder, its model and tokenizer as Hugging Face loads them, and our import."""
    root = tmp_path_factory.mktemp("marian")
    build_marian_folder(root / "hf")
    assert imports.main(["--from", "hf", str(root / "hf"), "--run-dir", str(root / "run")]) == 0
    hf_model = transformers.MarianMTModel.from_pretrained(root / "hf").eval()
    hf_model.generation_config.forced_eos_token_id = None  # ours stops at the limit as it is
    tokenizer = transformers.MarianTokenizer.from_pretrained(root / "hf")
    translator = Translator.from_run(root / "run", device="cpu")
    vocab = json.loads((root / "hf" / "vocab.json").read_text(encoding="utf-8"))
    ours = translator.tokenizers.tgt
    to_ours = {marian_id: ours.pieces.index(piece) for piece, marian_id in vocab.items()}
    return {
        "root": root, "hf": hf_model, "tokenizer": tokenizer, "translator": translator,
        "to_ours": to_ours, "pad": vocab["<pad>"],
    }  # fmt: skip


def _our_batch(marian: dict, rows: list[list[int]]) -> torch.Tensor:
    """Marian id rows (padded with Marian's pad) -> our ids, padded with ours."""
    to_ours = marian["to_ours"]
    return torch.tensor([[to_ours[i] for i in row] for row in rows])


def _sources(marian: dict, count: int = 6) -> tuple[dict, torch.Tensor]:
    texts = _lines("test.en", count)
    batch = marian["tokenizer"](texts, return_tensors="pt", padding=True)
    return batch, _our_batch(marian, batch["input_ids"].tolist())


def test_imported_tokenizer_gives_marians_ids_in_our_numbering(marian: dict) -> None:
    batch, src = _sources(marian)
    for text, row in zip(_lines("test.en", 6), src.tolist(), strict=True):
        expected = [i for i in row if i != PAD_ID]
        assert marian["translator"].source_ids(text) == expected


def test_imported_logits_equal_hugging_faces_on_a_padded_batch(marian: dict) -> None:
    batch, src = _sources(marian)
    labels = marian["tokenizer"](
        text_target=_lines("test.de", 6), return_tensors="pt", padding=True
    )["input_ids"]
    start = torch.full((labels.size(0), 1), marian["pad"])
    decoder_in = torch.cat([start, labels[:, :-1]], dim=1)  # shift_tokens_right
    with torch.no_grad():
        theirs = marian["hf"](**batch, decoder_input_ids=decoder_in).logits.log_softmax(-1)
        ours = marian["translator"].model(src, _our_batch(marian, decoder_in.tolist()))
    ours = ours.float().log_softmax(-1)
    marian_ids = sorted(marian["to_ours"])
    our_ids = [marian["to_ours"][i] for i in marian_ids]
    real = decoder_in != marian["pad"]
    real[:, 0] = True  # the start token
    difference = (ours[..., our_ids] - theirs[..., marian_ids]).abs()[real]
    assert difference.max().item() < 1e-4


@pytest.mark.parametrize("fast", [True, False], ids=["fast loss", "plain loss"])
def test_fine_tuning_an_imported_run_trains_on_hugging_faces_loss(marian: dict, fast: bool) -> None:
    # The decoder input starts from the model's start token (PAD for Marian) and the logits
    # carry the output bias: the training loss is Hugging Face's, token for token.
    batch, src = _sources(marian)
    labels = marian["tokenizer"](
        text_target=_lines("test.de", 6), return_tensors="pt", padding=True
    )["input_ids"]  # target + </s>, padded with Marian's pad
    model = marian["translator"].model
    examples = [
        Example(i, s[s != PAD_ID].numpy(), t[t != PAD_ID].numpy())
        for i, (s, t) in enumerate(zip(src, _our_batch(marian, labels.tolist()), strict=True))
    ]
    ours = collate(examples, PAD_ID, model.special_ids.bos)
    assert (ours.tgt_in[:, 0] == PAD_ID).all()  # Marian's decoder starts from its pad
    with torch.no_grad():
        loss = TranslationLoss(model, 0.0, PAD_ID, fast=fast)(ours.src, ours.tgt_in, ours.tgt_out)
        hf_labels = labels.masked_fill(labels == marian["pad"], -100)
        theirs = marian["hf"](**batch, labels=hf_labels).loss  # mean over the target tokens
    assert loss.item() / ours.num_target_tokens == pytest.approx(theirs.item(), abs=1e-4)


def _hf_outputs(marian: dict, batch: dict, **generate: object) -> list[list[int]]:
    with torch.no_grad():
        out = marian["hf"].generate(
            **batch, max_new_tokens=MAX_NEW, do_sample=False, bad_words_ids=[[marian["pad"]]],
            **generate,
        )  # fmt: skip
    results = []
    for row in out[:, 1:].tolist():
        tokens = row[: row.index(0)] if 0 in row else row  # up to </s> (Marian id 0)
        results.append([marian["to_ours"][i] for i in tokens])
    return results


def test_imported_greedy_search_equals_hugging_faces_generate(marian: dict) -> None:
    batch, src = _sources(marian)
    ours = greedy_search(marian["translator"].model, src, 0.0, MAX_NEW)
    assert [hyps[0].tokens for hyps in ours] == _hf_outputs(marian, batch, num_beams=1)


def test_imported_beam_search_without_length_penalty_equals_hugging_faces(marian: dict) -> None:
    batch, src = _sources(marian)
    ours = beam_search(marian["translator"].model, src, 5, 0.0, MAX_NEW, length_penalty=0.0)
    theirs = _hf_outputs(marian, batch, num_beams=5, length_penalty=0.0, early_stopping=False)
    assert [hyps[0].tokens for hyps in ours] == theirs


def test_imported_run_translates_from_the_command_line(marian: dict, capsys) -> None:
    from transformer.cli import translate

    code = translate.main(["--run", str(marian["root"] / "run"), "--text", "how are you"])
    assert code == 0
    assert capsys.readouterr().out.strip()


def _import_error(capsys, folder: Path, run: Path) -> str:
    code = imports.main(["--from", "hf", str(folder), "--run-dir", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not run.exists()
    return err[0]


def test_a_field_the_model_cannot_represent_is_refused_naming_it(
    marian: dict, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(marian["root"] / "hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config["activation_function"] = "tanh"
    (folder / "config.json").write_text(json.dumps(config))
    assert "activation_function" in _import_error(capsys, folder, tmp_path / "run")
    config["activation_function"] = "swish"
    config["scale_embedding"] = False
    (folder / "config.json").write_text(json.dumps(config))
    assert "scale_embedding" in _import_error(capsys, folder, tmp_path / "run")
    config["scale_embedding"] = True
    config["normalize_before"] = True
    (folder / "config.json").write_text(json.dumps(config))
    assert "normalize_before" in _import_error(capsys, folder, tmp_path / "run")


def test_a_missing_or_damaged_file_is_refused_in_one_line(
    marian: dict, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "hf"
    shutil.copytree(marian["root"] / "hf", folder)
    (folder / "target.spm").unlink()
    assert "target.spm" in _import_error(capsys, folder, tmp_path / "run")
    shutil.copy(marian["root"] / "hf" / "target.spm", folder / "target.spm")
    (folder / "model.safetensors").write_bytes(b"not weights")
    assert "model.safetensors" in _import_error(capsys, folder, tmp_path / "run")


# --------------------------------------------------------------------------- export


def _export(capsys, run: Path, output: Path) -> tuple[int, list[str]]:
    code = export_cli.main(["--run", str(run), "--format", "hf", "--output", str(output)])
    return code, capsys.readouterr().err.strip().splitlines()


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "best.pt", weights_only=False)["model"]


def test_import_export_import_round_trip_is_exact(marian: dict, tmp_path: Path, capsys) -> None:
    code, _ = _export(capsys, marian["root"] / "run", tmp_path / "hf")
    assert code == 0
    assert (
        imports.main(["--from", "hf", str(tmp_path / "hf"), "--run-dir", str(tmp_path / "again")])
        == 0
    )
    before, after = (
        _checkpoint_weights(marian["root"] / "run"),
        _checkpoint_weights(tmp_path / "again"),
    )
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    first = Translator.from_run(marian["root"] / "run", device="cpu")
    second = Translator.from_run(tmp_path / "again", device="cpu")
    texts = _lines("test.en", 8)
    assert first.translate(texts) == second.translate(texts)  # the same weights: exactly


def test_exported_trained_run_generates_our_greedy_outputs_in_hugging_face(
    tmp_path: Path, capsys
) -> None:
    run = train_tiny_run(tmp_path / "run")  # joint SentencePiece, interleaved sinusoids, relu
    code, _ = _export(capsys, run, tmp_path / "hf")
    assert code == 0
    hf_model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(tmp_path / "hf")
    translator = Translator.from_run(run, device="cpu")
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text(encoding="utf-8"))
    ours = translator.tokenizers.tgt
    to_ours = {i: ours._sp.piece_to_id(piece) for piece, i in vocab.items()}
    texts = _lines("test.en", 40)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    src = torch.tensor([[to_ours[i] for i in row] for row in batch["input_ids"].tolist()])
    for text, row in zip(texts, src.tolist(), strict=True):
        assert translator.source_ids(text) == [i for i in row if i != PAD_ID]
    expected = [hyps[0].tokens for hyps in greedy_search(translator.model, src, 0.0, MAX_NEW)]
    with torch.no_grad():
        out = hf_model.generate(**batch, max_new_tokens=MAX_NEW, num_beams=1, do_sample=False)
    eos = vocab["</s>"]
    theirs = [row[: row.index(eos)] if eos in row else row for row in out[:, 1:].tolist()]
    assert [[to_ours[i] for i in row] for row in theirs] == expected
    assert any(len(tokens) > 2 for tokens in expected)


def test_export_refuses_a_model_marian_cannot_represent_naming_the_key(
    tmp_path: Path, capsys
) -> None:
    run = make_tiny_run(tmp_path / "run", norm_position="pre")
    code, err = _export(capsys, run, tmp_path / "hf")
    assert code == 2 and len(err) == 1 and "model.norm_position" in err[0]
    assert not (tmp_path / "hf").exists()


def test_export_refuses_to_replace_a_directory_of_other_files(tmp_path: Path, capsys) -> None:
    run = make_tiny_run(tmp_path / "run")
    output = tmp_path / "hf"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    code, err = _export(capsys, run, output)
    assert code == 2 and len(err) == 1 and "not an earlier hf export" in err[0]
    assert [p.name for p in output.iterdir()] == ["notes.txt"]
    (output / "notes.txt").unlink()
    assert _export(capsys, run, output)[0] == 0  # empty: written
    assert _export(capsys, run, output)[0] == 0  # an earlier export of ours: replaced


def test_import_command_errors_are_one_line_pointing_to_its_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        imports.main(["--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("(see transformer-import --help)")


def _separate_run(run_dir: Path) -> Path:
    """A run with a tokenizer per side (each as large as its text allows: of different sizes)
    and a random model."""
    config = Config(
        model=tiny_model_config(),
        tokenizer=TokenizerConfig(
            vocab_size=2 * VOCAB_SIZE, joint=False
        ),  # more than either side reaches
    )
    src, tgt = zip(*PAIRS, strict=True)
    tokenizers = train_tokenizers(config.tokenizer, list(src), list(tgt), run_dir / "tokenizer")
    config.model.src_vocab_size = tokenizers.src.vocab_size
    config.model.tgt_vocab_size = tokenizers.tgt.vocab_size
    save_config(config, run_dir / "config.yaml")
    torch.manual_seed(0)
    state = {"model": Transformer(config.model).state_dict(), "config": config_to_dict(config)}
    for name in ("best.pt", "last.pt"):
        save_checkpoint(state, run_dir / "checkpoints" / name)
    return run_dir


def test_separate_tokenizers_export_as_two_vocabularies_and_translate_alike_after_import(
    tmp_path: Path, capsys
) -> None:
    run = _separate_run(tmp_path / "run")
    assert _export(capsys, run, tmp_path / "hf")[0] == 0
    assert (tmp_path / "hf" / "target_vocab.json").is_file()
    hf_model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.MarianTokenizer.from_pretrained(tmp_path / "hf")
    translator = Translator.from_run(run, device="cpu")
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text(encoding="utf-8"))
    target_vocab = json.loads((tmp_path / "hf" / "target_vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) != len(target_vocab)  # the case where <pad> cannot be last on both sides
    src_ids = {i: translator.tokenizers.src._sp.piece_to_id(p) for p, i in vocab.items()}
    tgt_ids = {i: translator.tokenizers.tgt._sp.piece_to_id(p) for p, i in target_vocab.items()}
    texts = [source for source, _ in PAIRS]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    src = torch.tensor([[src_ids[i] for i in row] for row in batch["input_ids"].tolist()])
    expected = [hyps[0].tokens for hyps in greedy_search(translator.model, src, 0.0, MAX_NEW)]
    with torch.no_grad():
        out = hf_model.generate(**batch, max_new_tokens=MAX_NEW, num_beams=1, do_sample=False)
    eos = target_vocab["</s>"]
    theirs = [row[: row.index(eos)] if eos in row else row for row in out[:, 1:].tolist()]
    assert [[tgt_ids[i] for i in row] for row in theirs] == expected
    assert (
        imports.main(["--from", "hf", str(tmp_path / "hf"), "--run-dir", str(tmp_path / "b")]) == 0
    )
    back = Translator.from_run(tmp_path / "b", device="cpu")  # halves now: permuted features
    tokens = [[t.tokens for t in nbest] for nbest in translator.translate(texts)]
    assert [[t.tokens for t in nbest] for nbest in back.translate(texts)] == tokens
