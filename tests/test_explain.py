"""`transformer-explain` and `explain`: the trace, attention.json and the heatmaps."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run

from transformer.cli.explain import MAX_ATTENTION_LINES, format_trace, main, write_explanation
from transformer.cli.translate import main as translate_main
from transformer.decoding.translator import Translator
from transformer.explain.plots import MissingExtraError, figure_class
from transformer.explain.trace import Explanation, explain, folder_name, slug

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """The command sets up logging for itself; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("explain") / "run")  # 1+2 layers, 2 heads


@pytest.fixture(scope="module")
def explanation(run_dir: Path) -> Explanation:
    translator = Translator.from_run(run_dir, device="cpu")
    return explain(translator, "how are you")


def test_the_trace_names_every_stage_of_the_model_with_its_shape(
    explanation: Explanation,
) -> None:
    S, D, H, d_k, V = len(explanation.source_pieces), 32, 2, 16, 64
    shapes = {stage.name: stage.shape for stage in explanation.stages}
    assert shapes["ids"] == (1, S)
    assert shapes["embeddings × √d_model"] == (1, S, D)
    assert shapes["+ positional encoding"] == (1, S, D)
    assert shapes["self-attention: Q, K, V = x W^Q, x W^K, x W^V in 2 heads"] == (
        1,
        H,
        S,
        d_k,
    )
    assert shapes["scores = Q Kᵀ / √d_k"] == (1, H, S, S)
    assert shapes["Concat(head_1, ..., head_h)"] == (1, S, D)
    assert shapes["· W^O"] == (1, S, D)
    assert shapes["Add & Norm"] == (1, S, D)
    assert shapes["feed-forward: max(0, x W_1 + b_1)"] == (1, S, 64)
    assert shapes["memory: the encoder output, read by every decoder layer"] == (1, S, D)
    assert shapes["logits = h W_outᵀ"] == (1, V)
    names = [stage.name for stage in explanation.stages]
    T = len(explanation.target_pieces)
    assert [n for n in names if n.startswith("step ")][0] == "step 1: reads <s>"
    assert sum(n.startswith("step ") for n in names) == T
    assert sum(n == "layer 2 cross-attention" for n in names) == T  # every step, every layer
    assert sum(n.startswith("chosen: ") for n in names) == T


def test_the_trace_text_has_one_line_per_stage(explanation: Explanation) -> None:
    text = format_trace(explanation)
    assert text.startswith("'how are you' -> ")
    assert len(text.splitlines()) == len(explanation.stages) + 2
    S = len(explanation.source_pieces)
    assert f"(1, 2, {S}, 16)" in text  # Q: (1, H, S, d_k)


def test_the_json_has_the_pieces_and_one_map_per_layer_and_head(explanation: Explanation) -> None:
    data = json.loads(json.dumps(explanation.to_json()))
    S, T = len(data["source_pieces"]), len(data["target_pieces"])
    assert data["source_pieces"][-1] == "</s>"
    assert data["decoder_input_pieces"][0] == "<s>" and len(data["decoder_input_pieces"]) == T
    expected = {"encoder_self": (1, 2, S, S), "decoder_self": (2, 2, T, T), "cross": (2, 2, T, S)}
    for key, shape in expected.items():
        weights = torch.tensor(data[key])
        assert weights.shape == shape
        torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]), atol=1e-3, rtol=0)
    assert (torch.tensor(data["decoder_self"]).triu(diagonal=1) == 0).all()


def test_the_json_translation_is_what_the_translator_gives(
    run_dir: Path, explanation: Explanation
) -> None:
    translator = Translator.from_run(run_dir, device="cpu")
    (best,) = translator.translate(["how are you"])
    assert explanation.translation == best[0].text
    assert explanation.score == pytest.approx(best[0].score)


def test_without_matplotlib_the_json_is_written_and_the_pngs_are_skipped_with_a_note(
    explanation: Explanation,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if absent
    with pytest.raises(MissingExtraError, match=r"transformer\[plot\]"):
        figure_class()
    written = write_explanation(explanation, tmp_path / "out")
    assert [path.name for path in written] == ["attention.json"]
    assert "pip install 'transformer[plot]'" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*.png"))


def test_the_heatmaps_are_png_files_one_per_attention_and_layer(
    explanation: Explanation, tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    written = write_explanation(explanation, tmp_path)
    pngs = sorted(path.name for path in written if path.suffix == ".png")
    assert pngs == [
        "cross_attention_layer1.png",
        "cross_attention_layer2.png",
        "decoder_self_attention_layer1.png",
        "decoder_self_attention_layer2.png",
        "encoder_self_attention_layer1.png",
    ]
    for name in pngs:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_slugs_are_short_safe_file_names() -> None:
    assert slug("How are you?") == "how-are-you"
    assert slug("Wie geht's dir, Jürgen?") == "wie-geht-s-dir-jürgen"
    assert slug("?!") == "sentence"
    assert len(slug("word " * 30)) <= 40


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "transformer.cli.explain", *args]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)


def test_the_command_prints_the_trace_and_writes_into_the_run(run_dir: Path) -> None:
    result = run_cli("--run", str(run_dir), "--text", "how are you", "--beam-size", "1")
    assert result.returncode == 0, result.stderr
    assert "embeddings × √d_model" in result.stdout
    assert "chosen: " in result.stdout
    written = run_dir / "explain" / folder_name("how are you") / "attention.json"
    assert json.loads(written.read_text(encoding="utf-8"))["source"] == "how are you"
    assert f"wrote {written}" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "   "], "--text is empty"),
        (["--text", "hi", "--beam-size", "0"], "--beam-size: must be between 1 and"),
        (["--text", "hi", "--output", "{file}"], "is a file"),
        (["--text", "hi", "--checkpoint", "missing.pt"], "does not exist"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(
    run_dir: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    keep_logging: None,
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    args = [arg.replace("{file}", str(a_file)) for arg in args]
    assert main(["--run", str(run_dir), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]
    assert a_file.read_text() == "keep me\n"


def test_the_walk_follows_the_modern_switches_too(tmp_path: Path) -> None:
    # RMSNorm, SwiGLU, rotary positions and multi-query attention: the walk must still match
    # the model's own forward pass (explain checks it) and name each switch.
    run = make_tiny_run(
        tmp_path / "modern",
        norm="rmsnorm",
        activation="swiglu",
        positional_encoding="rope",
        num_kv_heads=1,
        norm_position="pre",
    )
    explanation = explain(Translator.from_run(run, device="cpu"), "how are you")
    text = format_trace(explanation)
    for switch in ("RMSNorm", "SwiGLU", "RoPE", "1 heads shared by groups", "(no positions added)"):
        assert switch in text
    data = explanation.to_json()
    assert torch.tensor(data["cross"]).shape[1] == 2  # maps per query head, not per K/V head


def test_translate_with_attention_writes_each_lines_maps_for_its_own_translation(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    source = tmp_path / "input.en"
    source.write_text("how are you\n\ngood night\n", encoding="utf-8")
    folder = tmp_path / "maps"
    code = translate_main(["--run", str(run_dir), "--input", str(source),
                           "--attention", str(folder), "--beam-size", "2"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[1] == ""
    assert sorted(path.name for path in folder.iterdir()) == ["line_0001", "line_0003"]
    for number, line in ((1, 0), (3, 2)):
        data = json.loads((folder / f"line_{number:04d}" / "attention.json").read_text("utf-8"))
        assert data["source"] == source.read_text("utf-8").splitlines()[line]
        assert data["translation"] == printed[line]  # the maps are of the translation printed


def test_translate_with_attention_refuses_a_long_input_before_writing_anything(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    source = tmp_path / "long.en"
    source.write_text("hello\n" * (MAX_ATTENTION_LINES + 1), encoding="utf-8")
    output = tmp_path / "out.de"
    argv = ["--run", str(run_dir), "--input", str(source), "--output", str(output)]
    assert translate_main([*argv, "--attention", str(tmp_path / "maps")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"more than {MAX_ATTENTION_LINES} lines" in errors[0]
    assert not (tmp_path / "maps").exists() and not output.exists()


def test_translate_with_attention_needs_the_pytorch_engine(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    argv = ["--run", str(run_dir), "--text", "hi", "--attention", str(tmp_path / "maps")]
    assert translate_main([*argv, "--engine", "ctranslate2"]) == 2
    assert "--attention needs --engine pytorch" in capsys.readouterr().err
