"""transformer-explain's faults: heatmaps whose cost grows with the sentence, folders shared by
two texts, and a /docs page that needs the internet."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from tiny_runs import make_tiny_run

from transformer.cli.explain import JSON_FILE, main, write_explanation
from transformer.cli.translate import main as translate_main
from transformer.decoding.translator import Translator
from transformer.explain.trace import Explanation, folder_name
from transformer.model import AttentionMaps

MAX_SIDE_PIXELS = 4000  # a heatmap figure's width and height, for any sentence
MAX_TEXTS = 150  # text artists (titles, axis labels, tick labels) in one drawn figure


def random_attention(heads: int, queries: int, keys: int) -> torch.Tensor:
    """Weights (H, Tq, Tk) whose rows sum to one, as attention's do."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(heads, queries, keys, generator=generator).softmax(-1)


def pieces(count: int) -> list[str]:
    return [f"▁w{i}" for i in range(count)]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's header."""
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.mark.parametrize("count", [60, 255])
def test_a_heatmap_costs_a_bounded_size_and_text_whatever_the_number_of_pieces(
    count: int,
) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from transformer.explain.plots import DPI, LABELLED_UP_TO, draw_attention

    figure = draw_attention(random_attention(4, count, count), pieces(count), pieces(count), "x")
    width, height = figure.get_size_inches() * DPI
    assert width <= MAX_SIDE_PIXELS and height <= MAX_SIDE_PIXELS  # checked before drawing
    FigureCanvasAgg(figure).draw()  # ticks and their labels exist once drawn
    texts = [t for t in figure.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    labels = {t.get_text() for t in texts}
    if count <= LABELLED_UP_TO:
        assert set(pieces(count)) <= labels  # a readable size names every piece
    else:
        assert len(texts) <= MAX_TEXTS and not labels & set(pieces(count))


def long_explanation(source: int, target: int) -> Explanation:
    """An explanation of `source` source pieces and `target` decoder positions (1+1 layers)."""
    maps = AttentionMaps(
        encoder_self=random_attention(2, source, source)[None, None],
        decoder_self=random_attention(2, target, target).tril()[None, None],
        cross=random_attention(2, target, source)[None, None],
    )
    return Explanation("a long text", "ein langer Text", -1.0, pieces(source),
                       pieces(target), pieces(target), maps)  # fmt: skip


def test_heatmaps_without_piece_names_say_so_in_one_line_and_the_json_has_every_piece(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    from transformer.explain.plots import LABELLED_UP_TO

    count = LABELLED_UP_TO + 1
    written = write_explanation(long_explanation(count, 4), tmp_path / "long")
    notes = [line for line in capsys.readouterr().err.splitlines() if str(LABELLED_UP_TO) in line]
    assert len(notes) == 1 and notes[0].startswith("note: ") and JSON_FILE in notes[0]
    assert len(json.loads((tmp_path / "long" / JSON_FILE).read_text())["source_pieces"]) == count
    assert len(written) == 1 + 3  # the JSON and every heatmap: none skipped

    write_explanation(long_explanation(LABELLED_UP_TO, 4), tmp_path / "short")
    assert "note:" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("faults_explain") / "run", max_positions=128)


def test_translate_with_attention_draws_long_lines_at_a_bounded_size_too(
    long_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    from transformer.explain.plots import LABELLED_UP_TO

    text = " ".join(["the house is small and the dog is sleeping"] * 12)
    translator = Translator.from_run(long_run, device="cpu")
    assert len(translator.source_ids(text)) > LABELLED_UP_TO
    source = tmp_path / "long.en"
    source.write_text(text + "\n", encoding="utf-8")
    argv = ["--run", str(long_run), "--input", str(source), "--beam-size", "1"]
    assert translate_main([*argv, "--attention", str(tmp_path / "maps")]) == 0
    assert "note: " in capsys.readouterr().err
    pngs = list((tmp_path / "maps" / "line_0001").glob("*.png"))
    assert pngs and all(max(png_size(png)) <= MAX_SIDE_PIXELS for png in pngs)


def test_two_texts_with_the_same_slug_get_two_folders(
    long_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["how are you", "How are you?"]  # one slug: how-are-you
    for text in texts:
        assert main(["--run", str(long_run), "--text", text, "--quiet", "--beam-size", "1"]) == 0
    written = {
        json.loads(path.read_text(encoding="utf-8"))["source"]: path.parent
        for path in (long_run / "explain").glob(f"*/{JSON_FILE}")
    }
    assert set(texts) <= set(written) and written[texts[0]] != written[texts[1]]
    assert written[texts[0]].name == folder_name(texts[0])  # the folder the text names


def test_a_folder_with_another_texts_explanation_is_refused_and_left_as_it_was(
    long_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "how"
    argv = ["--run", str(long_run), "--quiet", "--beam-size", "1", "--output", str(folder)]
    assert main([*argv, "--text", "how are you"]) == 0
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    capsys.readouterr()
    assert main([*argv, "--text", "good night"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and str(folder) in errors[0]
    assert "'how are you'" in errors[0]
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert main([*argv, "--text", "how are you"]) == 0  # the same text may be explained again


@pytest.mark.parametrize("value", ["1000", "1e308", "nan", "-1"])
def test_an_explain_length_penalty_out_of_bounds_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    missing = tmp_path / "no-run"  # loading it would fail: the flag is checked first
    assert main(["--run", str(missing), "--text", "hi", "--length-penalty", value]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --length-penalty: ") and "0 to 10" in line


@pytest.mark.parametrize("inside", ["checkpoints", "tokenizer"])
def test_an_explain_output_inside_the_runs_own_folders_is_refused(
    long_run: Path, capsys: pytest.CaptureFixture[str], inside: str
) -> None:
    before = {p: p.read_bytes() for p in (long_run / inside).rglob("*") if p.is_file()}
    output = long_run / inside / "maps"
    assert main(["--run", str(long_run), "--text", "hi", "--output", str(output)]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert f"inside the run's {inside.rstrip('s')}" in line
    assert not output.exists()
    assert {p: p.read_bytes() for p in (long_run / inside).rglob("*") if p.is_file()} == before


def test_the_docs_page_loads_nothing_from_another_host_and_links_the_schema(
    long_run: Path,
) -> None:
    pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
    from fastapi.testclient import TestClient

    from transformer.serve.app import create_app

    with TestClient(create_app(Translator.from_run(long_run, device="cpu"))) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        text = page.text.lower()
        assert "cdn" not in text and "http://" not in text and "https://" not in text
        assert 'href="/openapi.json"' in text and "/translate" in text
        assert client.get("/openapi.json").status_code == 200
        for path in ("/redoc", "/docs/oauth2-redirect"):  # FastAPI's other CDN pages are gone
            assert client.get(path).status_code == 404
