"""The page of `transformer-serve` in a real browser: Playwright driving Debian's Chromium.

The server runs as the command a user starts, on a free loopback port; the browser types a
sentence, reads the translation, counts the heatmap's cells, switches layer, head and tab,
hovers a piece, and takes a screenshot. Playwright downloads no browser here: it drives
/usr/bin/chromium (`apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_runs import train_tiny_run

import benchmarks.serve as benchmark  # its server control serves here too

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("fastapi", reason="the serve extra: pip install -e '.[serve]'")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
)
if not CHROMIUM.is_file() and shutil.which("chromium") is None:
    pytest.skip(
        f"Chromium is not installed at {CHROMIUM}: apt-get install chromium (.ci/run does)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of `transformer-serve --run RUN` serving a model that knows the pairs."""
    run_dir = train_tiny_run(tmp_path_factory.mktemp("browser"))
    port = benchmark.free_port()
    process = benchmark.start_server(run_dir, port, [], timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        benchmark.stop_server(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        executable = CHROMIUM if CHROMIUM.is_file() else Path(shutil.which("chromium") or "")
        browser = playwright.chromium.launch(
            executable_path=str(executable), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def explanation(server: str, text: str) -> dict:
    """What POST /explain answers for `text`: the pieces the page must draw."""
    request = urllib.request.Request(
        f"{server}/explain",
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def test_the_page_translates_and_draws_one_cell_per_target_and_source_piece(
    server: str, browser: object, tmp_path: Path
) -> None:
    expect = sync_api.expect
    data = explanation(server, "how are you")
    S, T = len(data["source_pieces"]), len(data["target_pieces"])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server + "/")
    page.fill("#text", "how are you")
    page.click("#translate")

    expect(page.locator("#translation")).to_have_text("wie geht es dir")
    expect(page.locator("#nbest-list li")).to_have_count(3)  # the page asks for 3-best
    heatmap = page.locator("#heatmap")
    expect(heatmap).to_have_attribute("data-view", "cross")
    expect(heatmap.locator("tbody tr")).to_have_count(T)
    expect(heatmap.locator("tbody td.cell")).to_have_count(T * S)
    expect(heatmap.locator("thead th")).to_have_count(S + 1)
    expect(page.locator("#legend a")).to_have_attribute(
        "href", "/docs/walkthrough.md#11-cross-attention"
    )

    first_layer = heatmap.locator("td.cell").evaluate_all("cells => cells.map(c => c.title)")
    page.select_option("#layer", "1")
    expect(heatmap).to_have_attribute("data-layer", "2")
    second_layer = heatmap.locator("td.cell").evaluate_all("cells => cells.map(c => c.title)")
    assert len(second_layer) == T * S and second_layer != first_layer

    page.select_option("#head", "0")
    expect(heatmap).to_have_attribute("data-head", "0")
    heatmap.locator("tbody th").first.hover()
    expect(page.locator("#focus")).to_contain_text(f"{data['target_pieces'][0]} attends most to")
    lit = heatmap.locator("thead th.attended")
    assert lit.count() >= 1, "hovering a target piece highlights the source pieces it reads"

    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(PNG_MAGIC)

    page.click("button[data-view=decoder_self]")
    expect(heatmap.locator("tbody td.cell")).to_have_count(T * T)
    page.click("button[data-view=encoder_self]")
    expect(heatmap.locator("tbody td.cell")).to_have_count(S * S)
    assert all(url.startswith(server) for url in requests), "the page loads nothing from outside"
    page.close()


def test_the_page_shows_the_servers_error_for_a_text_too_long(server: str, browser: object) -> None:
    page = browser.new_page()
    page.goto(server + "/")
    page.fill("#text", "how are you " * 30)
    page.click("#translate")
    error = page.locator("#error")
    sync_api.expect(error).to_be_visible()
    sync_api.expect(error).to_contain_text("more than the model's limit")
    page.close()
