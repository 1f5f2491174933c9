"""A node component that exits at start: started again, and the error says what it wrote.

Real processes (small shell scripts standing in for a component); no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import node
from localcluster.node_config import NodeError, NodePaths


def component(tmp_path: Path, body: str) -> tuple[NodePaths, list[str], str]:
    """A script that runs `body`; its own path marks its process."""
    script = tmp_path / "component.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return NodePaths(state_dir=tmp_path / "state", bin_dir=tmp_path), [str(script)], str(script)


def test_a_component_that_always_exits_fails_naming_its_last_words(tmp_path: Path) -> None:
    paths, argv, marker = component(tmp_path, 'echo "open /missing.json: no such file"; exit 1\n')
    with pytest.raises(NodeError) as failed:
        node.start_until_ready(
            paths, "thing", argv, marker=marker, ready=lambda logged: "up" in logged, attempts=2
        )
    message = str(failed.value)
    assert "thing exited at start 2 times" in message
    assert "open /missing.json: no such file" in message
    assert (paths.logs / "thing.log").read_text().count("no such file") == 2


def test_a_component_that_exits_once_is_started_again(tmp_path: Path) -> None:
    flag = tmp_path / "tried"
    paths, argv, marker = component(
        tmp_path,
        f'if [ ! -e {flag} ]; then touch {flag}; echo "not yet"; exit 1; fi\n'
        'echo "controller up"; while :; do sleep 1; done\n',
    )
    node.start_until_ready(paths, "thing", argv, marker=marker, ready=lambda out: "up" in out)
    try:
        assert node.processes_naming(marker)
    finally:
        node.stop_component(paths, "thing")
    assert not node.processes_naming(marker)
