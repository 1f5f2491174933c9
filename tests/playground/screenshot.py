"""Write docs/playground.png: the playground with generated images, as the README shows it.

    .venv/bin/python tests/playground/screenshot.py

A real stub server and headless Chromium, as in the tests; the PNG is reduced to a
palette so it stays small.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

from support.browser import chromium
from support.server import running_server

OUTPUT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
VIEWPORT = {"width": 1120, "height": 800}


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as logs,
        running_server("--model", "stub", log_dir=Path(logs)) as server,
        chromium(viewport=VIEWPORT) as browser,
    ):
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#model:has-text('ready')")
        page.select_option("#preset", "256x256")
        for prompt, count in (("a red fox in the snow", "1"), ("a lighthouse at dusk", "2")):
            page.fill("#prompt", prompt)
            page.fill("#count", count)
            page.click("#generate")
            page.wait_for_selector(f"#history li >> text={prompt}")
        page.click("#copy-curl")
        page.locator("#snippet").blur()
        page.evaluate("window.scrollTo(0, 0)")
        shot = page.screenshot()
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=64)
    image.save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
