"""The page at / in a real headless Chromium (Debian's, driven by Playwright): type English,
pick greedy or beam, click, read the translation, count the heatmap cells, hover one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import Server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TEXT = "And God saw the light, that it was good."


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_bundle) -> Iterator[Server]:
    server = Server(tiny_bundle)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser, server):
    """A fresh page on the server; every request it makes must stay on that server."""
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto("/")
    yield page
    context.close()
    assert requested and all(url.startswith(server.url) for url in requested), requested


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_typing_english_and_clicking_shows_the_translation_and_a_full_heatmap(page, decoding):
    page.fill("#source", TEXT)
    page.check(f'input[name="decoding"][value="{decoding}"]')
    if decoding == "beam":
        page.fill("#beam-size", "3")
    with page.expect_response("**/translate") as response:
        page.click("#translate")
    sent = response.value.request.post_data_json
    answer = response.value.json()["translations"][0]
    assert sent["decoding"] == decoding and sent["return_attention"] is True
    assert sent.get("beam_size") == (3 if decoding == "beam" else None)

    page.wait_for_selector("#result:not([hidden])")
    assert page.inner_text("#translation") == " ".join(answer["text"].split())
    words = answer["attention"]
    cells = page.locator("#heatmap td.cell")
    assert cells.count() == len(words["source_words"]) * len(words["target_words"]) > 0
    assert page.locator("#heatmap th.source-word").all_inner_texts() == words["source_words"]
    assert page.locator("#heatmap th.target-word").count() == len(words["target_words"])


def test_hovering_a_cell_shows_its_weight(page):
    page.fill("#source", TEXT)
    page.click("#translate")
    first = page.locator("#heatmap td.cell").first
    first.wait_for()
    first.hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert re.fullmatch(r".+ ← .+: [01]\.\d{3}", tooltip.inner_text())
    assert tooltip.inner_text().endswith(first.get_attribute("data-weight"))


def test_an_error_from_the_api_is_shown_not_swallowed(page):
    page.fill("#source", "x" * 2000)
    page.evaluate("document.getElementById('source').value += 'yy'")  # past maxlength, as a script could
    page.click("#translate")
    page.wait_for_selector("#error:not([hidden])")
    assert "max_chars_per_text=2000" in page.inner_text("#error")


def test_the_page_shows_the_model_card(page):
    page.wait_for_function("document.getElementById('model').textContent.includes('en-es')")
    assert "attention" in page.inner_text("#model")
