"""pytest plugin: `helm`, the real helm binary for chart tests that need no cluster.

helm is built from source with the cluster binaries (localcluster/build-binaries.sh);
this plugin takes it from there (building the set when it is missing, as `make test`
does), so chart tests never depend on whatever helm happens to be on PATH.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import launcher

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tti-operator"


def ensure_helm() -> Path:
    """The pinned helm, built (with the other cluster binaries) if it is not there yet."""
    helm = launcher.default_paths().helm
    if not helm.exists():
        subprocess.run(["bash", str(launcher.BUILD_SCRIPT)], check=True)
    return helm


@dataclass(frozen=True)
class Helm:
    """Runs helm; `kubeconfig` is needed only for commands that talk to a cluster."""

    binary: Path
    kubeconfig: Path | None = None

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binary), *args]
        if self.kubeconfig is not None:
            command += ["--kubeconfig", str(self.kubeconfig)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")
        return result

    def render(
        self,
        *set_values: str,
        values: dict[str, Any] | None = None,
        release: str = "tti",
        namespace: str = "tti-system",
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """`helm template` with `--set` strings and/or a values dict."""
        with tempfile.TemporaryDirectory() as scratch:
            args = ["template", release, str(CHART), "--namespace", namespace]
            args += values_args(Path(scratch), *set_values, values=values)
            return self.run(*args, check=check)

    def template(
        self,
        *set_values: str,
        values: dict[str, Any] | None = None,
        release: str = "tti",
        namespace: str = "tti-system",
    ) -> list[dict[str, Any]]:
        """The objects `helm template` renders (it must succeed)."""
        rendered = self.render(*set_values, values=values, release=release, namespace=namespace)
        return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def values_args(scratch: Path, *set_values: str, values: dict[str, Any] | None) -> list[str]:
    """`--set` and `--values` arguments; a dict goes through a file (JSON is YAML)."""
    args: list[str] = []
    if values is not None:
        path = scratch / "values.json"
        path.write_text(json.dumps(values))
        args += ["--values", str(path)]
    for value in set_values:
        args += ["--set", value]
    return args


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm without a cluster: lint, template, package."""
    return Helm(ensure_helm())


def objects_of(objects: Sequence[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = objects_of(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
