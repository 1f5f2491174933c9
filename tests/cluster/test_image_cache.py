"""The image builds' bookkeeping: each image prunes only its own stale cache, and a build that
would fill the disk stops before it starts."""

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


def test_a_build_that_would_fill_the_disk_stops_at_once_naming_what_it_needs(
    tmp_path: Path,
) -> None:
    free_gb = images.shutil.disk_usage(tmp_path).free / images.GB
    images.require_room(tmp_path, free_gb / 2, "building tti-server:0.1.0")

    with pytest.raises(images.ImageError) as raised:
        images.require_room(tmp_path, free_gb + 10, "building tti-server:0.1.0")
    message = str(raised.value)
    assert message.startswith(f"building tti-server:0.1.0 needs about {free_gb + 10:.0f} GB free")
    assert str(tmp_path) in message and "TTI_CACHE_DIR" in message
