"""The playground page in a real browser (headless Chromium) against a real server process."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image
from playwright.sync_api import Page, Request, Route, expect
from support.server import ServerProcess, running_server

from tti_contracts.catalogue import CATALOGUE, request_rules
from tti_server.backends.stub import STUB_COLOR
from tti_server.generation import fitted_side

pytestmark = pytest.mark.browser

#: The bytes behind an <img> (a blob: URL), base64, read inside the page.
READ_IMAGE = """async (img) => {
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return btoa(text);
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("playground")
    with running_server("--model", "stub", "--max-side", "1024", log_dir=log_dir) as process:
        yield process


def open_page(page: Page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    expect(page.locator("#model")).to_have_text("Model stub · ready")


def generate(page: Page, **fields: str) -> None:
    for field, value in fields.items():
        page.fill(f"#{field}", value)
    count = page.locator("#history li").count()
    page.click("#generate")
    expect(page.locator("#history li")).to_have_count(count + 1)


def shown_images(page: Page) -> list[bytes]:
    images = page.locator("#images img")
    return [base64.b64decode(images.nth(i).evaluate(READ_IMAGE)) for i in range(images.count())]


def test_generate_shows_the_stub_blue_at_the_size_asked(page: Page, server: ServerProcess) -> None:
    """The stub draws any size (caikit's does not round), so the page announces no rounding."""
    open_page(page, server)
    page.fill("#width", "203")
    page.fill("#height", "100")
    expect(page.locator("#preset")).to_have_value("custom")
    expect(page.locator("#size-hint")).to_have_text("")
    generate(page, count="2")

    images = shown_images(page)
    assert len(images) == 2
    for data in images:
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.size) == ("PNG", (203, 100))
        assert image.convert("RGB").getcolors() == [(203 * 100, STUB_COLOR)]
    seed = int(page.input_value("#seed"))
    captions = page.locator("#images figcaption")
    expect(captions.nth(0)).to_contain_text(f"203x100 · seed {seed} · ")
    expect(captions.nth(1)).to_contain_text(f"seed {seed + 1}")
    link = page.locator("#images a").first
    assert link.get_attribute("download") == f"tti-{seed}.png"
    assert (link.get_attribute("href") or "").startswith("blob:")
    expect(page.locator("#status")).to_contain_text("2 images in")


def test_the_controls_follow_the_models_rules(page: Page, server: ServerProcess) -> None:
    """A model's rules (the catalogue's, in /info/models) set the controls: FLUX.1-schnell
    takes 1-8 steps, no guidance and no negative prompt, 1024² by default."""
    schnell = request_rules(CATALOGUE["flux.1-schnell"])

    def as_schnell(route: Route) -> None:
        answer = route.fetch().json()
        answer["models"][0]["metadata"]["rules"] = schnell
        route.fulfill(json=answer)

    page.route("**/info/models", as_schnell)
    open_page(page, server)
    expect(page.locator("#steps")).to_have_value("4")
    expect(page.locator("#steps")).to_have_attribute("max", "8")
    expect(page.locator("#guidance")).to_be_disabled()
    expect(page.locator("#negative")).to_be_disabled()
    expect(page.locator("#negative")).to_have_attribute(
        "placeholder", "stub takes no negative prompt"
    )
    expect(page.locator("#width")).to_have_value("1024")
    expect(page.locator("#size-hint")).to_have_text("")


def test_the_size_hint_rounds_as_a_model_with_a_side_multiple_does(
    page: Page, server: ServerProcess
) -> None:
    """SDXL's /info/models says side_multiple 8: nearest multiple, ties to even, as the server
    (tti_server.generation.fitted_side) and caikit's SDXL round."""

    def as_sdxl(route: Route) -> None:
        answer = route.fetch().json()
        answer["models"][0]["metadata"]["rules"]["side_multiple"] = 8
        route.fulfill(json=answer)

    page.route("**/info/models", as_sdxl)
    open_page(page, server)
    page.fill("#width", "203")
    page.fill("#height", "100")
    times = "\N{MULTIPLICATION SIGN}"
    expect(page.locator("#size-hint")).to_contain_text(f"200 {times} 96")
    page.fill("#height", "4")
    expect(page.locator("#size-hint")).to_contain_text(f"200 {times} 8")
    assert fitted_side(100, 8) == 96 and fitted_side(4, 8) == 8 and fitted_side(203, 8) == 200


def test_a_bad_size_shows_the_apis_message(page: Page, server: ServerProcess) -> None:
    open_page(page, server)
    page.fill("#width", "4000")
    page.click("#generate")
    expect(page.locator("#error")).to_have_text(
        "The server refused the request (400): size (width): 4000 exceeds the maximum of "
        "1024 pixels for stub"
    )
    expect(page.locator("#images img")).to_have_count(0)
    expect(page.locator("#generate")).to_be_enabled()


def test_copy_as_curl_and_python_reproduce_the_image(
    page: Page, server: ServerProcess, tmp_path: Path
) -> None:
    open_page(page, server)
    page.select_option("#format", "webp")
    page.fill("#negative", "fog, it's grey")  # a quote the shell must survive
    generate(page, width="64", height="48", steps="2", guidance="1.5")
    [shown] = shown_images(page)
    seed = int(page.input_value("#seed"))

    page.click("#copy-curl")
    curl = page.input_value("#snippet")
    assert curl.startswith(f"curl -s '{server.url}/v1/images/generations'")
    answer = subprocess.run(["bash", "-c", curl], capture_output=True, check=True, timeout=60)
    body = json.loads(answer.stdout)
    assert (body["size"], body["output_format"]) == ("64x48", "webp")
    assert base64.b64decode(body["data"][0]["b64_json"]) == shown

    page.click("#copy-python")
    python = page.input_value("#snippet")
    subprocess.run([sys.executable, "-c", python], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / f"tti-{seed}.webp").read_bytes() == shown


def test_the_page_loads_and_generates_without_leaving_its_origin(
    page: Page, server: ServerProcess
) -> None:
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    open_page(page, server)
    generate(page, width="32", height="32")
    page.click("#copy-curl")

    paths = {urlsplit(url).path for url in requests if url.startswith(server.url + "/")}
    assert {"/", "/playground.js", "/playground.css", "/v1/models", "/readyz"} <= paths
    assert "/v1/images/generations" in paths
    elsewhere = [
        url
        for url in requests
        if not url.startswith(server.url + "/") and urlsplit(url).scheme not in ("blob", "data")
    ]
    assert not elsewhere


def test_enter_submits_and_the_button_waits_for_the_answer(
    page: Page, server: ServerProcess
) -> None:
    held: list[Route] = []

    def hold(route: Route) -> None:
        held.append(route)

    page.route("**/v1/images/generations", hold)
    open_page(page, server)
    page.fill("#prompt", "a red fox")  # the caret is at the end
    page.keyboard.press("Shift+Enter")  # a new line, not a request
    page.keyboard.type("in the rain")
    expect(page.locator("#prompt")).to_have_value("a red fox\nin the rain")
    page.keyboard.press("Enter")
    expect(page.locator("#generate")).to_be_disabled()
    while not held:
        page.wait_for_timeout(20)
    page.keyboard.press("Enter")  # a second Enter while in flight sends nothing
    held[0].continue_()
    expect(page.locator("#images img")).to_have_count(1)
    expect(page.locator("#generate")).to_be_enabled()
    assert len(held) == 1
    body = json.loads(held[0].request.post_data or "")
    assert body["prompt"] == "a red fox\nin the rain"


def test_seeds_change_unless_kept_and_earlier_results_stay(
    page: Page, server: ServerProcess
) -> None:
    open_page(page, server)
    generate(page, width="16", height="16")
    first = page.input_value("#seed")
    generate(page)
    second = page.input_value("#seed")
    assert second != first
    page.check("#keep-seed")
    generate(page)
    assert page.input_value("#seed") == second
    page.fill("#seed", "42")  # typing a seed keeps it
    expect(page.locator("#keep-seed")).to_be_checked()
    generate(page)
    expect(page.locator("#images figcaption")).to_contain_text("seed 42 ")

    history = page.locator("#history button")
    expect(history).to_have_count(4)
    history.nth(3).click()  # the oldest
    expect(page.locator("#images figcaption")).to_contain_text(f"seed {first} ")
    expect(history.nth(3)).to_have_attribute("aria-current", "true")


def test_a_401_asks_for_a_token_kept_in_the_session_and_sent(
    page: Page, server: ServerProcess
) -> None:
    """No gateway yet: a route plays one, refusing requests without the token."""
    sent: list[str | None] = []

    def gateway(route: Route, request: Request) -> None:
        sent.append(request.headers.get("authorization"))
        if request.headers.get("authorization") != "Bearer s3cret":
            envelope = {"code": 401, "details": "a bearer token is required", "id": "x"}
            route.fulfill(status=401, json=envelope)
        else:
            route.continue_()

    page.route("**/v1/images/generations", gateway)
    open_page(page, server)
    page.click("#generate")
    expect(page.locator("#error")).to_contain_text("access token (401): a bearer token is required")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type("s3cret")
    page.keyboard.press("Enter")  # saves the token and generates again
    expect(page.locator("#images img")).to_have_count(1)
    assert sent == [None, "Bearer s3cret"]
    assert page.evaluate("sessionStorage.getItem('tti-playground-token')") == "s3cret"
    expect(page.locator("#token-box")).to_be_hidden()

    page.click("#copy-curl")
    curl = page.input_value("#snippet")
    assert '-H "Authorization: Bearer $TTI_TOKEN"' in curl and "s3cret" not in curl
    page.click("#copy-python")
    assert 'api_key=os.environ["TTI_TOKEN"]' in page.input_value("#snippet")


def test_a_busy_model_is_waited_for_in_words(page: Page, server: ServerProcess) -> None:
    answers = iter([503])

    def busy_once(route: Route) -> None:
        status = next(answers, None)
        if status is None:
            route.continue_()
            return
        envelope = {"code": 503, "details": "model: still loading and warming up", "id": "x"}
        route.fulfill(status=503, json=envelope, headers={"Retry-After": "1"})

    page.route("**/v1/images/generations", busy_once)
    open_page(page, server)
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text(
        "The model is not ready or too busy (503): model: still loading and warming up; "
        "trying again in 1 s"
    )
    expect(page.locator("#images img")).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()


def test_every_control_has_a_label_and_a_phone_needs_no_sideways_scroll(
    page: Page, server: ServerProcess
) -> None:
    page.set_viewport_size({"width": 360, "height": 740})
    open_page(page, server)
    generate(page, width="1024", height="512")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea, button")]
              .filter((el) => el.tagName === "BUTTON"
                ? !(el.textContent.trim() || el.getAttribute("aria-label"))
                : el.labels.length === 0)
              .map((el) => el.id || el.outerHTML)"""
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 360


#: Every change of a partial image in #images, and each final image, in the order they
#: happened. A record holds a `data-partial` attribute's *old* value, so the value each
#: change set is the next record's old value (the last one's is still on the element).
RECORD_IMAGES = """() => {
  window.seen = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type === "attributes") window.seen.push({ img: r.target, old: r.oldValue });
      for (const node of r.addedNodes || []) {
        for (const img of node.querySelectorAll ? node.querySelectorAll("img") : []) {
          if (!("partial" in img.dataset)) window.seen.push({ final: true });
        }
      }
    }
  }).observe(document.getElementById("images"), {
    subtree: true, childList: true, attributes: true,
    attributeFilter: ["data-partial"], attributeOldValue: true,
  });
}"""
SEEN = """() => window.seen.map((s, i, all) => {
  if (s.final) return "final";
  const next = all.slice(i + 1).find((later) => later.img === s.img);
  return next ? next.old : s.img.dataset.partial;
})"""


def test_a_multi_step_model_shows_its_picture_forming(
    page: Page, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The tiny SDXL (30 steps by default): previews are on; three partial images come in
    order, then the image, which the copied (plain) request reproduces byte for byte."""
    with running_server(
        "--model", "sdxl", "--model-path", str(tiny_model_dir), log_dir=tmp_path
    ) as server:
        page.goto(server.url + "/")
        expect(page.locator("#model")).to_have_text("Model sdxl · ready")
        expect(page.locator("#previews")).to_be_checked()
        page.evaluate(RECORD_IMAGES)
        for field, value in {"width": "64", "height": "64", "steps": "4", "guidance": "0"}.items():
            page.fill(f"#{field}", value)
        page.click("#generate")
        # A real model on a shared CPU: wait as long as a request may take.
        expect(page.locator("#history li")).to_have_count(1, timeout=120_000)
        expect(page.locator("#error")).to_be_hidden()
        assert page.evaluate(SEEN) == ["0", "1", "2", "final"]
        [shown] = shown_images(page)
        assert Image.open(io.BytesIO(shown)).size == (64, 64)

        page.click("#copy-curl")
        curl = page.input_value("#snippet")
        assert '"stream"' not in curl and "partial_images" not in curl
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, check=True, timeout=120)
        assert base64.b64decode(json.loads(answer.stdout)["data"][0]["b64_json"]) == shown


def test_previews_are_off_for_a_one_step_model(page: Page, server: ServerProcess) -> None:
    open_page(page, server)
    expect(page.locator("#previews")).not_to_be_checked()
