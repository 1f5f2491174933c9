"""The image builds' step-image bookkeeping: each image prunes only its own stale cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import images


class RecordingBuildah:
    """Stands in for buildah's `rmi` only: the bookkeeping decides, this records."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove(self, image_id: str) -> None:
        self.removed.append(image_id)


@pytest.fixture
def buildah(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingBuildah:
    monkeypatch.setenv("TTI_CACHE_DIR", str(tmp_path))
    return RecordingBuildah()


def test_a_rebuild_removes_only_its_own_step_images_it_no_longer_uses(
    buildah: RecordingBuildah,
) -> None:
    keep = images.keep_step_images
    keep(buildah, "tti-server", {"torch-layer", "sources-1"})
    keep(buildah, "tti-operator", {"operator-1"})
    assert buildah.removed == []

    # The server's sources changed: the torch layer was reused, the old sources step is stale.
    keep(buildah, "tti-server", {"torch-layer", "sources-2"})
    assert buildah.removed == ["sources-1"]

    # An operator rebuild never touches the server's cache.
    keep(buildah, "tti-operator", {"operator-2"})
    assert buildah.removed == ["sources-1", "operator-1"]
