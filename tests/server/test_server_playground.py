"""The playground's routes (the page itself is tested in a browser: tests/playground/)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from tti_playground import ASSETS
from tti_server.app import create_app
from tti_server.cli import load_settings
from tti_server.settings import Settings

PLAYGROUND = files("tti_playground")
#: Small on purpose: the page is three hand-written files (total stated in docs/server.md).
MAX_TOTAL_BYTES = 32 * 1024


def test_the_page_and_its_files_are_served_with_a_same_origin_policy(api: httpx.Client) -> None:
    for path, name, media_type in ASSETS:
        response = api.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media_type
        assert response.content == (PLAYGROUND / name).read_bytes()
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "connect-src 'self' blob:" in policy
    paths = api.get("/openapi.json").json()["paths"]
    assert not {path for path, _, _ in ASSETS} & set(paths)


def test_the_files_are_small_and_name_no_other_origin() -> None:
    sizes = {name: len((PLAYGROUND / name).read_bytes()) for _, name, _ in ASSETS}
    assert sum(sizes.values()) <= MAX_TOTAL_BYTES, sizes
    for _, name, _ in ASSETS:
        text = (PLAYGROUND / name).read_text()
        assert not re.search(r"https?://|=\"//|@import", text), name
    assert "url(" not in (PLAYGROUND / "playground.css").read_text()


def test_playground_false_leaves_the_page_out_but_not_the_api() -> None:
    assert load_settings(["--playground", "false"]).playground is False
    app = create_app(Settings(model="stub", playground=False))
    with TestClient(app) as client:
        for path, _, _ in ASSETS:
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["details"] == f"path: no route for {path}"
        assert client.get("/v1/models").status_code == 200


def test_demo_server_prints_the_playgrounds_address(tmp_path: Path) -> None:
    """Without a terminal it stops after the image; from one it would serve until Ctrl-C."""
    demo = subprocess.run(
        [sys.executable, "-m", "tti_server.tools.demo"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    assert re.search(r"the playground, .*: http://127\.0\.0\.1:\d+/\n", demo.stdout)
    assert (tmp_path / "out" / "demo.png").stat().st_size > 0
