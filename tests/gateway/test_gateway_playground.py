"""The playground through the gateway: one page, every model, in a real browser (headless
Chromium) against a real gateway process in front of two real stub `tti-server` processes.

Each stub runs with its own `--model-id` and answers 404 for any other name, so an image
shown for the model picked proves the request reached that model.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Page, expect
from support.clients import sample
from support.gateway import StartGateway, launch_gateway
from support.server import ServerProcess, launch_server

from tti_playground import ASSETS, HEADERS, read
from tti_server.backends.stub import STUB_COLOR

pytestmark = pytest.mark.slow

TOKEN = "gateway-s3cret"
OPENAI = 'tti_requests_total{method="POST",route="/v1/images/generations"'
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
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway-playground")


@pytest.fixture(scope="module")
def models(log_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}
    try:
        for name in ("alpha", "beta"):
            args = ("--model", "stub", "--model-id", name, "--grpc-port", "0")
            started[name] = launch_server(args, log_dir)
        yield started
    finally:
        for server in started.values():
            server.stop()


def table(models: dict[str, ServerProcess]) -> str:
    """Both servers, and `idle`: known, with no pod (at zero)."""
    return ";".join(f"{name}={server.url}" for name, server in models.items()) + ";idle="


@pytest.fixture(scope="module")
def gateway(models: dict[str, ServerProcess], log_dir: Path) -> Iterator[ServerProcess]:
    process = launch_gateway(("--models", table(models)), log_dir)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def locked_gateway(models: dict[str, ServerProcess], log_dir: Path) -> Iterator[ServerProcess]:
    tokens = log_dir / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n")
    args = ("--models", table(models), "--auth-tokens-file", str(tokens))
    process = launch_gateway(args, log_dir)
    try:
        yield process
    finally:
        process.stop()


def generate(page: Page, **fields: str) -> None:
    for field, value in fields.items():
        page.fill(f"#{field}", value)
    count = page.locator("#history li").count()
    page.click("#generate")
    expect(page.locator("#history li")).to_have_count(count + 1)


def shown_image(page: Page) -> Image.Image:
    [data] = [
        base64.b64decode(img.evaluate(READ_IMAGE)) for img in page.locator("#images img").all()
    ]
    return Image.open(io.BytesIO(data))


# -- the page's files ---------------------------------------------------------------------


def test_the_gateway_serves_the_servers_page_with_its_headers_and_no_token(
    locked_gateway: ServerProcess,
) -> None:
    for path, name, media_type in ASSETS:
        answer = httpx.get(locked_gateway.url + path)
        assert answer.status_code == 200, path
        assert answer.content == read(name)
        assert answer.headers["content-type"] == media_type
        for header, value in HEADERS.items():
            assert answer.headers[header] == value, (path, header)
    # The API behind the page still wants the token.
    assert httpx.get(locked_gateway.url + "/v1/models").status_code == 401


def test_playground_false_leaves_the_page_out(
    start_gateway: StartGateway, models: dict[str, ServerProcess]
) -> None:
    gateway = start_gateway("--models", table(models), "--playground", "false")
    for path, _, _ in ASSETS:
        answer = httpx.get(gateway.url + path)
        assert answer.status_code == 404, path
        assert answer.json()["details"] == f"path: no route for {path}"
    # The API is unchanged.
    assert httpx.get(gateway.url + "/v1/models").status_code == 200
    off = start_gateway("--models", table(models), env={"TTI_GATEWAY_PLAYGROUND": "false"})
    assert httpx.get(off.url + "/").status_code == 404


def test_the_model_list_says_how_a_side_fits_only_where_it_knows(gateway: ServerProcess) -> None:
    """The static table knows no backend (the page then rounds nothing); the cluster source
    gives the catalogue's (tests/gateway/test_gateway_cluster_source.py)."""
    data = httpx.get(gateway.url + "/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["alpha", "beta", "idle"]
    assert all("side_multiple" not in m for m in data)


# -- in the browser -----------------------------------------------------------------------


@pytest.mark.browser
def test_the_picker_lists_every_model_and_the_one_picked_generates(
    page: Page, gateway: ServerProcess, models: dict[str, ServerProcess]
) -> None:
    page.goto(gateway.url + "/")
    expect(page.locator("#model")).to_have_text("Model alpha · ready")
    picker = page.locator("#model-picker")
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_text(
        ["alpha (Ready)", "beta (Ready)", "idle (ScaledToZero)"]
    )
    # A model at zero says so in words.
    picker.select_option("idle")
    expect(page.locator("#model")).to_have_text(
        "Model idle · scaled to zero: the first request wakes it (a cold start takes a while)"
    )

    picker.select_option("beta")
    expect(page.locator("#model")).to_have_text("Model beta · ready")
    before = {name: sample(server.url, OPENAI) for name, server in models.items()}
    page.fill("#width", "203")
    page.fill("#height", "100")
    expect(page.locator("#size-hint")).to_have_text("")  # no side_multiple: nothing rounds
    generate(page)

    image = shown_image(page)
    assert (image.format, image.size) == ("PNG", (203, 100))
    assert image.convert("RGB").getcolors() == [(203 * 100, STUB_COLOR)]
    expect(page.locator("#images figcaption")).to_contain_text("203x100 · seed ")
    after = {name: sample(server.url, OPENAI) for name, server in models.items()}
    assert (after["beta"] - before["beta"], after["alpha"] - before["alpha"]) == (1, 0)


@pytest.mark.browser
def test_with_auth_on_the_page_asks_for_the_token_and_then_generates(
    page: Page, locked_gateway: ServerProcess
) -> None:
    page.goto(locked_gateway.url + "/")
    expect(page.locator("#model")).to_have_text("The server wants an access token.")
    expect(page.locator("#token-box")).to_be_visible()
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(TOKEN)
    # Enter sends the form: the token is saved, the models listed with it, then the request.
    count = page.locator("#history li").count()
    page.keyboard.press("Enter")
    expect(page.locator("#history li")).to_have_count(count + 1)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#token-box")).to_be_hidden()
    expect(page.locator("#model")).to_have_text("Model alpha · ready")
    expect(page.locator("#model-picker option")).to_have_count(3)
    assert shown_image(page).convert("RGB").getpixel((0, 0)) == STUB_COLOR

    page.locator("#model-picker").select_option("beta")
    expect(page.locator("#model")).to_have_text("Model beta · ready")
    generate(page, width="48", height="32")
    assert shown_image(page).size == (48, 32)


@pytest.mark.browser
def test_a_wrong_token_is_asked_for_again(page: Page, locked_gateway: ServerProcess) -> None:
    page.goto(locked_gateway.url + "/")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type("not-the-token")
    page.click("#save-token")
    expect(page.locator("#token-box")).to_be_visible()
    expect(page.locator("#model")).to_have_text("The server wants an access token.")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(TOKEN)
    page.click("#save-token")
    expect(page.locator("#model")).to_have_text("Model alpha · ready")
