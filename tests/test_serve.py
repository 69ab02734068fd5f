"""`transformer-serve`: the JSON API through FastAPI's test client, batching, bad requests, CLI.

The model is trained for a few seconds on the twenty pairs of `tiny_runs` (by
transformer-train itself), so that it really says "wie geht es dir"; every expected answer
comes from the same `Translator` or `explain` called directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tiny_runs import PAIRS, kept_logging, train_tiny_run

import benchmarks.serve as benchmark  # its server control and load client serve here too
from transformer.cli.serve import main as serve_main
from transformer.decoding.translator import Translator
from transformer.explain.trace import explain

fastapi = pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from transformer.serve.app import create_app  # noqa: E402
from transformer.serve.settings import ServeSettings  # noqa: E402

SOURCES = [source for source, _ in PAIRS]
LIMITS = ServeSettings(max_texts=8, max_request_bytes=4096, max_beam_size=6)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    with kept_logging():
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def translator(run_dir: Path) -> Translator:
    translator = Translator.from_run(run_dir, device="cpu")
    best = translator.translate(["how are you"])[0][0].text
    assert best == "wie geht es dir", f"the fixture's model did not learn the pairs: {best!r}"
    return translator


@pytest.fixture(scope="module")
def client(translator: Translator) -> Iterator[TestClient]:
    with TestClient(create_app(translator, LIMITS)) as client:
        yield client


def expected(translator: Translator, texts: list[str], **changes: int) -> list[list[dict]]:
    """What /translate should answer: the translator's own n-best lists, as JSON."""
    decoding = dataclasses.replace(translator.config.decoding, **changes)
    return [
        [{"text": h.text, "score": round(h.score, 4)} for h in nbest]
        for nbest in translator.translate(texts, decoding)
    ]


# --------------------------------------------------------------------------- the API


def test_translate_text_answers_what_the_translator_says(
    client: TestClient, translator: Translator
) -> None:
    response = client.post("/translate", json={"text": "how are you"})
    assert response.status_code == 200
    (result,) = response.json()["translations"]
    assert result["text"] == "wie geht es dir"
    assert result["nbest"] == expected(translator, ["how are you"])[0]
    assert result["score"] == result["nbest"][0]["score"]


def test_translate_texts_gives_each_text_its_nbest_list_best_first_in_order(
    client: TestClient, translator: Translator
) -> None:
    texts = ["good night", "how are you", "the house is small"]
    body = {"texts": texts, "beam_size": 4, "nbest": 3, "length_penalty": 0.0}
    results = client.post("/translate", json=body).json()["translations"]
    want = expected(translator, texts, beam_size=4, nbest=3, length_penalty=0.0)
    assert [r["nbest"] for r in results] == want
    assert [r["text"] for r in results] == ["gute nacht", "wie geht es dir", "das haus ist klein"]
    for result in results:
        scores = [h["score"] for h in result["nbest"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_explain_answers_the_json_of_transformer_explain_with_its_shapes_and_row_sums(
    client: TestClient, translator: Translator
) -> None:
    data = client.post("/explain", json={"text": "how are you"}).json()
    assert data == json.loads(json.dumps(explain(translator, "how are you").to_json()))
    assert data["translation"] == "wie geht es dir"
    S, T = len(data["source_pieces"]), len(data["target_pieces"])
    assert len(data["decoder_input_pieces"]) == T
    model = translator.config.model
    shapes = {
        "encoder_self": (model.num_encoder_layers, model.num_heads, S, S),
        "decoder_self": (model.num_decoder_layers, model.num_heads, T, T),
        "cross": (model.num_decoder_layers, model.num_heads, T, S),
    }
    for name, (layers, heads, rows, columns) in shapes.items():
        maps = data[name]
        assert len(maps) == layers and {len(layer) for layer in maps} == {heads}
        for head in (head for layer in maps for head in layer):
            assert len(head) == rows and {len(row) for row in head} == {columns}
            assert all(abs(sum(row) - 1) < 1e-3 for row in head), f"{name} rows must sum to 1"


def test_explain_uses_the_requested_beam_size(client: TestClient, translator: Translator) -> None:
    data = client.post("/explain", json={"text": "good night", "beam_size": 1}).json()
    greedy = dataclasses.replace(translator.config.decoding, beam_size=1)
    assert data["score"] == round(explain(translator, "good night", greedy).score, 4)


def test_health_and_info_describe_the_model_and_the_limits(
    client: TestClient, translator: Translator
) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    model = translator.config.model
    assert info["model"]["d_model"] == model.d_model == 32
    assert info["model"]["num_heads"] == model.num_heads
    assert info["model"]["parameters"] == translator.model.num_parameters()
    assert info["vocabulary"]["source"] == translator.tokenizers.src.vocab_size
    assert info["decoding"]["beam_size"] == translator.config.decoding.beam_size
    assert info["max_source_tokens"] == translator.max_source_tokens
    assert info["limits"]["max_texts"] == LIMITS.max_texts


def test_the_page_and_its_static_files_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for path in ("/static/app.js", "/static/style.css"):
        assert path in page.text
        assert client.get(path).status_code == 200
    script = client.get("/static/app.js").text
    for section in ("9-the-encoder", "10-the-decoders-masked-self-attention", "11-cross-attention"):
        assert section in script  # the legend's links into docs/walkthrough.md
    assert "http://" not in page.text + script and "https://" not in page.text + script  # offline


def test_the_openapi_document_lists_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/translate", "/explain", "/health", "/info"} <= set(paths)


# --------------------------------------------------------------------------- bad requests

LONG_TEXT = "how are you " * 30  # more pieces than the model's 63
BAD_REQUESTS = {
    "malformed JSON": ("/translate", b'{"text": "how', 422, "body"),
    "not an object": ("/translate", [1, 2], 422, "body"),
    "no body": ("/translate", b"", 422, "body"),
    "neither text nor texts": ("/translate", {"beam_size": 2}, 422, "text"),
    "text and texts": ("/translate", {"text": "a", "texts": ["b"]}, 422, "texts"),
    "text of the wrong type": ("/translate", {"text": 3}, 422, "text"),
    "texts not a list": ("/translate", {"texts": "how are you"}, 422, "texts"),
    "a text in texts of the wrong type": ("/translate", {"texts": ["a", 3]}, 422, "texts[1]"),
    "beam_size a string": ("/translate", {"text": "a", "beam_size": "2"}, 422, "beam_size"),
    "beam_size a float": ("/translate", {"text": "a", "beam_size": 2.5}, 422, "beam_size"),
    "empty text": ("/translate", {"text": ""}, 422, "text"),
    "blank text": ("/translate", {"text": "  \t"}, 422, "text"),
    "an empty text in texts": ("/translate", {"texts": ["a", " "]}, 422, "texts[1]"),
    "empty texts": ("/translate", {"texts": []}, 422, "texts"),
    "a text longer than the model's limit": ("/translate", {"text": LONG_TEXT}, 413, "text"),
    "too many texts": ("/translate", {"texts": ["good night"] * 9}, 413, "texts"),
    "beam size 0": ("/translate", {"text": "a", "beam_size": 0}, 422, "beam_size"),
    "beam size over the limit": ("/translate", {"text": "a", "beam_size": 7}, 422, "beam_size"),
    "nbest 0": ("/translate", {"text": "a", "nbest": 0}, 422, "nbest"),
    "nbest over beam_size": ("/translate", {"text": "a", "nbest": 3}, 422, "nbest"),
    "negative length penalty": ("/translate", {"text": "a", "length_penalty": -1}, 422,
                                "length_penalty"),
    "unknown field": ("/translate", {"text": "a", "beam": 2}, 422, "beam"),
    "body over the size limit": ("/translate", {"text": "a" * 5000}, 413, "body"),
    "explain without text": ("/explain", {}, 422, "text"),
    "explain of an empty text": ("/explain", {"text": " "}, 422, "text"),
    "explain of a text too long": ("/explain", {"text": LONG_TEXT}, 413, "text"),
    "explain with an unknown field": ("/explain", {"text": "a", "nbest": 2}, 422, "nbest"),
    "explain with beam size 0": ("/explain", {"text": "a", "beam_size": 0}, 422, "beam_size"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_a_bad_request_is_a_4xx_json_error_naming_the_field_and_serving_goes_on(
    client: TestClient, case: str
) -> None:
    path, body, status, field = BAD_REQUESTS[case]
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    assert error["error"].startswith(f"{field}: ")
    assert "Traceback" not in response.text
    after = client.post("/translate", json={"text": "good night"})
    assert after.json()["translations"][0]["text"] == "gute nacht"


def test_unknown_paths_and_methods_are_json_errors(client: TestClient) -> None:
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["field"] == "path"
    wrong = client.get("/translate")
    assert wrong.status_code == 405 and wrong.json()["field"] == "method"


def test_an_unknown_field_error_suggests_the_field_meant(client: TestClient) -> None:
    error = client.post("/translate", json={"text": "a", "beem_size": 2}).json()["error"]
    assert "did you mean beam_size?" in error


@pytest.mark.parametrize("batching", ["continuous", "groups"])
def test_a_model_failure_is_a_500_json_error_without_traceback_and_serving_goes_on(
    translator: Translator, monkeypatch: pytest.MonkeyPatch, batching: str
) -> None:
    failures = iter([RuntimeError("boom")])
    decode = translator.model.decode

    def decode_once_failing(*args: object, **kwargs: object) -> object:
        error = next(failures, None)
        if error is not None:
            raise error
        return decode(*args, **kwargs)

    with TestClient(create_app(translator, ServeSettings(batching=batching))) as client:
        monkeypatch.setattr(translator.model, "decode", decode_once_failing)
        response = client.post("/translate", json={"text": "how are you"})
        assert response.status_code == 500
        assert response.json()["field"] == "server"
        assert "RuntimeError" in response.json()["error"] and "boom" not in response.text
        assert client.post("/translate", json={"text": "how are you"}).status_code == 200


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("batching", ["continuous", "groups"])
def test_fifty_simultaneous_requests_are_batched_and_each_answered_correctly_in_order(
    translator: Translator, batching: str
) -> None:
    settings = ServeSettings(batching=batching, batch_window_ms=20, workers=2)
    requests = [[SOURCES[i % 20], SOURCES[(7 * i + 3) % 20]] for i in range(50)]
    want = dict(zip(SOURCES, (nbest[0] for nbest in expected(translator, SOURCES)), strict=True))
    with TestClient(create_app(translator, settings)) as client:
        with ThreadPoolExecutor(50) as pool:
            responses = list(
                pool.map(lambda texts: client.post("/translate", json={"texts": texts}), requests)
            )
        health = client.get("/health").json()
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200
        answers = [
            {"text": r["text"], "score": r["score"]} for r in response.json()["translations"]
        ]
        assert answers == [want[text] for text in texts]
    assert health["sentences"] == 100
    assert health["batches"] < 50, "concurrent requests must share batches"  # fmt: skip


# --------------------------------------------------------------------------- the command


def test_without_the_serve_extra_the_command_names_it_and_exits_2(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails
    assert serve_main(["--run", str(run_dir)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert "[serve]" in error


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--run", "no/such/run"], "run directory no/such/run does not exist"),
        (["--max-texts", "0"], "--max-texts must be >= 1 (got 0)"),
        (["--batch-window-ms", "-1"], "--batch-window-ms must be >= 0"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_bad_options_are_one_error_line_and_exit_2(
    run_dir: Path, arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--run", str(run_dir), "--port", "0", *arguments]
    assert serve_main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_a_port_in_use_is_one_error_line_and_exit_2(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main(["--run", str(run_dir), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_the_command_serves_the_page_and_the_api_on_loopback(
    run_dir: Path, translator: Translator
) -> None:
    port = benchmark.free_port()
    process = benchmark.start_server(run_dir, port, [], timeout=60)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
            assert b"/static/app.js" in reply.read()
        texts = SOURCES * 2
        latencies, answers, _ = asyncio.run(benchmark.load(port, texts, clients=4))
    finally:
        err = benchmark.stop_server(process)
    assert process.returncode == 0, err
    assert answers == [nbest[0]["text"] for nbest in expected(translator, texts)]
    assert len(latencies) == len(texts) and min(latencies) > 0
    assert f"on http://127.0.0.1:{port}/" in err
    assert "Traceback" not in err
