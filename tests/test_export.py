"""Export to CTranslate2: the weights' layout, refused options, and `transformer-export`.

The layout tests compare CTranslate2's log-probability of every target token (its
`score_batch`, teacher forcing) with our model's, on random tiny models of every switch:
a comparison of numbers, not of argmax choices, so near-ties of random models do not matter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run, tiny_model_config

from transformer.cli.export import main as export_main
from transformer.config import ModelConfig
from transformer.data.special_ids import BOS_ID, EOS_ID
from transformer.export.directory import ensure_export, export_run, read_export
from transformer.export.spec import ExportError, transformer_spec
from transformer.model import Transformer

ct2 = pytest.importorskip("ctranslate2")

SWITCHES = {
    "paper": {},  # post-norm, LayerNorm, ReLU, sinusoidal, tied output
    "pre-norm, gelu, learned": dict(
        norm_position="pre", activation="gelu", positional_encoding="learned"
    ),
    "modern: pre rmsnorm, swiglu, rope, grouped kv": dict(
        norm_position="pre",
        norm="rmsnorm",
        activation="swiglu",
        positional_encoding="rope",
        num_heads=4,
        num_kv_heads=2,
    ),
    "post rmsnorm, multi-query": dict(norm="rmsnorm", num_kv_heads=1),
    "rope, post-norm": dict(positional_encoding="rope"),
    "swiglu, post-norm": dict(activation="swiglu"),
    "silu (Marian's swish), post-norm": dict(activation="silu"),
    "separate vocabularies, untied output": dict(src_vocab_size=50, tie_output_embeddings=False),
    "shared embeddings": dict(share_embeddings=True),
}
SOURCES = [[5, 9, 17, 30, 41, EOS_ID], [12, 7, EOS_ID], [33, 8, 21, 4, 19, 26, 44, 10, EOS_ID]]
TARGETS = [[6, 11, 25, 40, 9, 31, 18], [27, 4, 13], [15, 38, 22, 7, 29, 12, 36, 20, 8, 41, 5]]


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The commands install a handler on the captured stderr; restore the previous setup."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def pieces(size: int) -> list[str]:
    """A vocabulary of `size` made-up pieces with our special pieces in their places."""
    return ["<pad>", "<unk>", "<s>", "</s>"] + [f"▁p{i}" for i in range(4, size)]


def ct2_log_probs(model: Transformer, directory: Path, fix_spec=None) -> list[list[float]]:
    """CTranslate2's log-prob of each target token and EOS, for SOURCES and TARGETS."""
    config = model.config
    src, tgt = pieces(config.src_vocab_size), pieces(config.tgt_vocab_size)
    spec = transformer_spec(model, src, tgt, config.max_positions)
    if fix_spec is not None:
        fix_spec(spec)
    spec.validate()
    spec.optimize()
    spec.save(str(directory))
    translator = ct2.Translator(str(directory), intra_threads=1)
    results = translator.score_batch(
        [[src[i] for i in ids] for ids in SOURCES], [[tgt[i] for i in ids] for ids in TARGETS]
    )
    return [list(result.log_probs) for result in results]


def our_log_probs(model: Transformer) -> list[list[float]]:
    """Our model's log-prob of each target token and EOS (teacher forcing, one by one)."""
    values = []
    with torch.no_grad():
        for src, tgt in zip(SOURCES, TARGETS, strict=True):
            logits = model(torch.tensor([src]), torch.tensor([[BOS_ID, *tgt]]))  # (1, T, V)
            log_probs = logits.log_softmax(dim=-1)[0]  # (T, V)
            values.append([log_probs[t, token].item() for t, token in enumerate([*tgt, EOS_ID])])
    return values


def random_model(**switches: object) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_model_config(**switches)).eval()


# --------------------------------------------------------------------------- the layout


@pytest.mark.parametrize("switches", SWITCHES.values(), ids=SWITCHES.keys())
def test_ctranslate2_gives_every_target_token_our_models_log_prob(
    switches: dict, tmp_path: Path
) -> None:
    model = random_model(**switches)
    ours = our_log_probs(model)
    theirs = ct2_log_probs(model, tmp_path)
    for mine, other in zip(ours, theirs, strict=True):
        assert other == pytest.approx(mine, abs=1e-4)


def _builtin_sinusoids(spec) -> None:
    spec.encoder.position_encodings.encodings = "__optional"
    spec.decoder.position_encodings.encodings = "__optional"


def _rotate_halves(spec) -> None:
    for layer in [*spec.encoder.layer, *spec.decoder.layer]:
        layer.self_attention.rotary_interleave = False


@pytest.mark.parametrize(
    ("switches", "mistake"),
    [({}, _builtin_sinusoids), ({"positional_encoding": "rope"}, _rotate_halves)],
    ids=["ctranslate2's own sinusoid layout", "rope on halves, not pairs"],
)
def test_the_comparison_catches_a_layout_that_differs_from_ours(
    switches: dict, mistake, tmp_path: Path
) -> None:
    # Why the exporter writes its own position table and interleaves the rotations.
    model = random_model(**switches)
    ours = our_log_probs(model)
    theirs = ct2_log_probs(model, tmp_path, fix_spec=mistake)
    worst = max(
        abs(a - b) for m, o in zip(ours, theirs, strict=True) for a, b in zip(m, o, strict=True)
    )
    assert worst > 1e-2


def test_a_model_option_the_exporter_does_not_know_is_refused_by_name() -> None:
    @dataclasses.dataclass
    class LaterModelConfig(ModelConfig):
        qk_norm: bool = False

    config = LaterModelConfig(**dataclasses.asdict(tiny_model_config()), qk_norm=True)
    model = Transformer(config)
    with pytest.raises(ExportError, match=r"^model\.qk_norm: True cannot be exported"):
        transformer_spec(model, pieces(64), pieces(64), 64)


def test_a_model_option_the_installed_ctranslate2_lacks_is_refused_by_name(monkeypatch) -> None:
    class OldEncoderSpec(ct2.specs.TransformerEncoderSpec):
        def __init__(self, num_layers, num_heads, pre_norm=True, activation=0) -> None:
            super().__init__(num_layers, num_heads, pre_norm, activation=activation)

    monkeypatch.setattr(ct2.specs, "TransformerEncoderSpec", OldEncoderSpec)
    model = random_model(positional_encoding="rope")
    with pytest.raises(ExportError, match=r"^model\.positional_encoding: rope needs a newer"):
        transformer_spec(model, pieces(64), pieces(64), 64)


# --------------------------------------------------------------------------- transformer-export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("export") / "run")


def export(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = export_main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def one_error_line(code: int, err: str) -> str:
    """Exit code 2 and one `error:` line, the last (after progress lines), no traceback."""
    lines = err.strip().splitlines()
    assert code == 2 and lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err and sum(line.startswith("error") for line in lines) == 1
    return lines[-1]


def test_the_export_holds_ctranslate2s_files_the_tokenizer_and_what_was_exported(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, err = export(capsys, "--run", run_dir, "--format", "ctranslate2", "--output", out)
    assert code == 0, err
    names = {path.name for path in out.iterdir()}
    assert names == {
        "model.bin",
        "config.json",
        "shared_vocabulary.json",
        "spm.model",
        "export.json",
    }
    record = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert record["checkpoint"] == str((run_dir / "checkpoints" / "best.pt").resolve())
    assert record["quantization"] == "float32"
    assert record["config"]["model"]["src_vocab_size"] == 64
    assert (out / "spm.model").read_bytes() == (run_dir / "tokenizer" / "spm.model").read_bytes()
    vocabulary = json.loads((out / "shared_vocabulary.json").read_text(encoding="utf-8"))
    assert vocabulary[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert "translate with: transformer-translate" in err


def test_int8_quantization_makes_a_smaller_export_that_ctranslate2_loads(
    run_dir: Path, tmp_path: Path
) -> None:
    float32 = export_run(run_dir, tmp_path / "f32")
    int8 = export_run(run_dir, tmp_path / "i8", quantization="int8")
    assert (float32.quantization, int8.quantization) == ("float32", "int8")
    size = {name: (tmp_path / name / "model.bin").stat().st_size for name in ("f32", "i8")}
    assert size["i8"] < size["f32"] * 0.6
    translator = ct2.Translator(str(tmp_path / "i8"), intra_threads=1)
    assert translator.translate_batch([["▁how", "</s>"]], max_decoding_length=3)[0].hypotheses


def test_separate_tokenizers_are_exported_as_their_two_sentencepiece_models(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path / "run")
    tokenizer = run / "tokenizer"
    (tokenizer / "spm.model").rename(tokenizer / "src.model")
    (tokenizer / "tgt.model").write_bytes((tokenizer / "src.model").read_bytes())
    export_run(run, tmp_path / "out")
    names = {path.name for path in (tmp_path / "out").iterdir()}
    assert {"src.model", "tgt.model"} <= names and "spm.model" not in names


def test_an_output_that_is_a_file_is_refused_and_left_as_it_was(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine\n", encoding="utf-8")
    code, err = export(capsys, "--run", run_dir, "--format", "ctranslate2", "--output", file)
    assert "is a file" in one_error_line(code, err)
    assert file.read_text(encoding="utf-8") == "mine\n"


def test_an_output_directory_of_other_files_is_refused_and_left_as_it_was(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "thesis.tex").write_text("chapter 1\n", encoding="utf-8")
    code, err = export(capsys, "--run", run_dir, "--format", "ctranslate2", "--output", tmp_path)
    assert "directory of other files" in one_error_line(code, err)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_a_failed_export_leaves_the_earlier_export_as_it_was(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    export_run(run_dir, out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformer.export.directory.shutil.copyfile", disk_full)
    code, err = export(
        capsys, "--run", run_dir, "--format", "ctranslate2", "--output", out, "--checkpoint", "last"
    )
    assert "No space left on device" in one_error_line(code, err)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_a_second_export_replaces_the_first(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_run(run_dir, out)
    export_run(run_dir, out, checkpoint="last", quantization="int8")
    record = read_export(out)
    assert record.checkpoint.endswith("last.pt") and record.quantization == "int8"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_the_default_export_is_remade_when_its_checkpoint_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = make_tiny_run(tmp_path / "run")
    caplog.set_level(logging.INFO, logger="transformer")
    first = ensure_export(run)
    assert "has no CTranslate2 export" in caplog.text
    caplog.clear()
    assert ensure_export(run) == first and caplog.text == ""  # up to date: used as it is
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes() + b"")  # rewritten, as training does
    ensure_export(run)
    assert "exporting" in caplog.text


def test_without_ctranslate2_the_command_names_the_extra(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 fails
    code, err = export(capsys, "--run", run_dir, "--format", "ctranslate2", "--output", tmp_path)
    assert "pip install 'transformer[ctranslate2]'" in one_error_line(code, err)


def test_a_run_that_does_not_exist_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = export(capsys, "--run", tmp_path / "nope", "--format", "ctranslate2")
    assert "does not exist" in one_error_line(code, err)
