"""`transformer-serve --engine ctranslate2`: /translate through a CTranslate2 export, answered
as `transformer-translate --engine ctranslate2` answers, with the PyTorch engine's API.

The run is the tiny model of `tiny_runs.train_tiny_run` (it learned the twenty pairs), exported
by `ensure_export` to RUN/ctranslate2, where both commands look for it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from socket import IPPROTO_TCP, TCP_NODELAY
from subprocess import CompletedProcess

import pytest
from tiny_runs import PAIRS, error_line, kept_logging, train_tiny_run

import benchmarks.serve as benchmark
from transformer.cli.serve import listen
from transformer.decoding.translator import Translator
from transformer.explain.trace import explain

pytest.importorskip("ctranslate2", reason="the ctranslate2 extra: pip install -e '.[ctranslate2]'")
pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from transformer.export.directory import ensure_export  # noqa: E402
from transformer.export.engine import CTranslate2Translator  # noqa: E402
from transformer.serve.app import create_app  # noqa: E402
from transformer.serve.ctranslate2_engine import CTranslate2Engine  # noqa: E402
from transformer.serve.settings import ServeSettings  # noqa: E402

SOURCES = [source for source, _ in PAIRS]
LIMITS = ServeSettings(max_texts=8, max_request_bytes=4096, max_beam_size=6)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    with kept_logging():
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = train_tiny_run(tmp_path_factory.mktemp("serve-ct2"))
    ensure_export(run)  # RUN/ctranslate2, as transformer-translate --engine ctranslate2 makes it
    return run


@pytest.fixture(scope="module")
def translator(run_dir: Path) -> Translator:
    return Translator.from_run(run_dir, device="cpu")


def ct2_app(translator: Translator, run_dir: Path, settings: ServeSettings = LIMITS):
    exported = CTranslate2Translator.from_export(run_dir / "ctranslate2", threads=1)
    return create_app(translator, settings, CTranslate2Engine(exported, settings, 4000))


@pytest.fixture(scope="module")
def client(translator: Translator, run_dir: Path) -> Iterator[TestClient]:
    with TestClient(ct2_app(translator, run_dir)) as client:
        yield client


@pytest.fixture(scope="module")
def pytorch_client(translator: Translator) -> Iterator[TestClient]:
    with TestClient(create_app(translator, LIMITS)) as client:
        yield client


def translate_command(
    cli: Callable[..., CompletedProcess], run_dir: Path, texts: list[str], *flags: object
) -> list[str]:
    """What `transformer-translate --engine ctranslate2 --scores` prints, line by line."""
    argv = ["--run", run_dir, "--engine", "ctranslate2", "--workers", "1", *flags]
    for text in texts:
        argv += ["--text", text]
    result = cli("translate", *argv)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --------------------------------------------------------------------------- translations


@pytest.mark.parametrize("beam_size", [1, 4], ids=["greedy", "beam 4"])
def test_translations_and_scores_are_those_of_translate_with_engine_ctranslate2(
    client: TestClient, run_dir: Path, cli: Callable[..., CompletedProcess], beam_size: int
) -> None:
    texts = ["how are you", "the house is small", "good night", "she reads a book"]
    printed = translate_command(cli, run_dir, texts, "--scores", "--beam-size", beam_size)
    body = {"texts": texts, "beam_size": beam_size}
    results = client.post("/translate", json=body).json()["translations"]
    assert [f"{r['text']}\t{r['score']:.4f}" for r in results] == printed


def test_nbest_lists_are_those_of_translate_with_engine_ctranslate2(
    client: TestClient, run_dir: Path, cli: Callable[..., CompletedProcess]
) -> None:
    texts = ["i am tired", "good morning"]
    printed = translate_command(cli, run_dir, texts, "--beam-size", 4, "--nbest", 3)
    body = {"texts": texts, "beam_size": 4, "nbest": 3}
    results = client.post("/translate", json=body).json()["translations"]
    served = [
        f"{i} ||| {h['text']} ||| {h['score']:.4f}"
        for i, result in enumerate(results)
        for h in result["nbest"]
    ]
    assert served == printed


def test_a_multi_text_request_answers_each_text_in_its_order(client: TestClient) -> None:
    texts = [SOURCES[i] for i in (10, 0, 7, 3, 19, 1, 12, 8)]  # how are you second
    alone = [
        client.post("/translate", json={"text": text}).json()["translations"][0]["text"]
        for text in texts
    ]
    together = client.post("/translate", json={"texts": texts}).json()["translations"]
    assert [r["text"] for r in together] == alone
    assert alone[1] == "wie geht es dir" and alone[7] == "gute nacht"


def test_two_hundred_simultaneous_requests_are_all_answered_in_order_and_batched(
    translator: Translator, run_dir: Path
) -> None:
    settings = ServeSettings(batch_window_ms=20, workers=2)
    requests = [[SOURCES[i % 20], SOURCES[(7 * i + 3) % 20]] for i in range(200)]
    with TestClient(ct2_app(translator, run_dir, settings)) as client:
        want = {
            text: client.post("/translate", json={"text": text}).json()["translations"][0]
            for text in SOURCES
        }
        before = client.get("/health").json()
        with ThreadPoolExecutor(200) as pool:
            responses = list(
                pool.map(lambda texts: client.post("/translate", json={"texts": texts}), requests)
            )
        health = client.get("/health").json()
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["translations"] == [want[text] for text in texts]
    assert health["sentences"] - before["sentences"] == 400
    assert health["batches"] - before["batches"] < 200, "concurrent requests must share batches"
    assert health["queued"] == 0


def test_a_failure_of_ctranslate2_is_a_500_for_its_requests_and_serving_goes_on(
    translator: Translator, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = CTranslate2Translator.from_export(run_dir / "ctranslate2", threads=1)
    failures = iter([RuntimeError("boom")])

    def translate_once_failing(*args: object, **kwargs: object) -> object:
        error = next(failures, None)
        if error is not None:
            raise error
        return CTranslate2Translator.translate(exported, *args, **kwargs)

    monkeypatch.setattr(exported, "translate", translate_once_failing)
    with TestClient(
        create_app(translator, LIMITS, CTranslate2Engine(exported, LIMITS, 4000))
    ) as client:
        response = client.post("/translate", json={"text": "how are you"})
        assert response.status_code == 500
        assert response.json()["field"] == "server" and "boom" not in response.text
        after = client.post("/translate", json={"text": "how are you"})
        assert after.json()["translations"][0]["text"] == "wie geht es dir"


# --------------------------------------------------------------------------- the same API

BAD_REQUESTS = {
    "malformed JSON": b'{"text": "how',
    "neither text nor texts": {"beam_size": 2},
    "text and texts": {"text": "a", "texts": ["b"]},
    "a text in texts of the wrong type": {"texts": ["a", 3]},
    "an empty text in texts": {"texts": ["a", " "]},
    "a text longer than the model's limit": {"text": "how are you " * 30},
    "too many texts": {"texts": ["good night"] * 9},
    "beam size over the limit": {"text": "a", "beam_size": 7},
    "nbest over beam_size": {"text": "a", "nbest": 3},
    "negative length penalty": {"text": "a", "length_penalty": -1},
    "unknown field": {"text": "a", "beem_size": 2},
    "body over the size limit": {"text": "a" * 5000},
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_a_bad_request_gets_the_4xx_error_of_the_pytorch_engine(
    client: TestClient, pytorch_client: TestClient, case: str
) -> None:
    body = BAD_REQUESTS[case]

    def post(to: TestClient):
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            return to.post("/translate", content=body, headers=headers)
        return to.post("/translate", json=body)

    ours, theirs = post(client), post(pytorch_client)
    assert 400 <= ours.status_code < 500
    assert (ours.status_code, ours.json()) == (theirs.status_code, theirs.json())
    assert client.post("/translate", json={"text": "good night"}).status_code == 200


def test_info_names_the_translating_and_the_explaining_engine(
    client: TestClient, pytorch_client: TestClient, run_dir: Path
) -> None:
    info = client.get("/info").json()
    assert (info["engine"], info["explain_engine"]) == ("ctranslate2", "pytorch")
    assert info["export"]["directory"] == str(run_dir / "ctranslate2")
    assert info["export"]["quantization"] == "float32"
    plain = pytorch_client.get("/info").json()
    assert (plain["engine"], plain["explain_engine"]) == ("pytorch", "pytorch")
    same = {key: value for key, value in info.items() if key not in ("engine", "export")}
    assert same == {key: value for key, value in plain.items() if key != "engine"}


def test_the_page_says_which_engine_translates_and_that_attention_is_pytorchs(
    client: TestClient,
) -> None:
    script = client.get("/static/app.js").text
    assert "explain_engine" in script and "the attention below comes from" in script


def test_explain_is_the_pytorch_models_explanation(
    client: TestClient, translator: Translator
) -> None:
    data = client.post("/explain", json={"text": "how are you"}).json()
    assert data == json.loads(json.dumps(explain(translator, "how are you").to_json()))
    assert data["translation"] == "wie geht es dir"


# --------------------------------------------------------------------------- the command


def test_a_missing_export_is_one_error_line_saying_how_to_make_it(
    run_dir: Path, tmp_path: Path, cli: Callable[..., CompletedProcess]
) -> None:
    missing = tmp_path / "no-export"
    result = cli(
        "serve", "--run", run_dir, "--port", "0", "--engine", "ctranslate2", "--export", missing
    )
    error_line(result, f"{missing} is not a CTranslate2 export", "transformer-export --run")


def test_without_ctranslate2_the_command_names_the_extra_in_one_line(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, cli: Callable[..., CompletedProcess]
) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now fails
    result = cli("serve", "--run", run_dir, "--port", "0", "--engine", "ctranslate2")
    error_line(result, "needs the ctranslate2 package", "[ctranslate2]")


def test_an_export_without_engine_ctranslate2_is_one_error_line(
    run_dir: Path, cli: Callable[..., CompletedProcess]
) -> None:
    result = cli("serve", "--run", run_dir, "--port", "0", "--export", run_dir / "ctranslate2")
    error_line(result, "add --engine ctranslate2")


def test_the_command_serves_translations_of_the_export_on_loopback(
    run_dir: Path, client: TestClient
) -> None:
    port = benchmark.free_port()
    options = ["--engine", "ctranslate2"]
    process = benchmark.start_server(run_dir, port, options, timeout=60)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=5) as reply:
            info = json.load(reply)
        texts = SOURCES[:6]
        _, answers, _ = asyncio.run(benchmark.load(port, texts, clients=3))
    finally:
        err = benchmark.stop_server(process)
    assert process.returncode == 0, err
    assert (info["engine"], info["explain_engine"]) == ("ctranslate2", "pytorch")
    want = client.post("/translate", json={"texts": texts}).json()["translations"]
    assert answers == [r["text"] for r in want]
    assert "Traceback" not in err


def test_answers_are_not_held_back_by_nagle_on_the_servers_connections() -> None:
    """The server's own socket says TCP, so asyncio disables Nagle on each connection (with
    proto 0 it did not, and every keep-alive answer waited ~40 ms for a delayed ACK)."""
    sock = listen("127.0.0.1", 0)

    async def nodelay_of_a_connection() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            option = writer.get_extra_info("socket").getsockopt(IPPROTO_TCP, TCP_NODELAY)
            accepted.set_result(option)
            writer.close()

        server = await asyncio.start_server(connected, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(nodelay_of_a_connection()) != 0
