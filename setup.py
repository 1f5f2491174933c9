"""The one build step pyproject.toml cannot declare: the gRPC code, generated from the protos.

`build_py` runs grpcio-tools' protoc on `server/tti_server/grpc_api/protos/*.proto`
and writes the Python modules (and their `.pyi` type stubs) to `tti_server/grpc_api/
generated/`: into the wheel for `pip install .` (the Docker image), into the source
tree for an editable install (`make venv`; the folder is git-ignored). Nothing
generated is committed.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PACKAGE = "tti_server.grpc_api"
PROTOS = Path("server/tti_server/grpc_api/protos")


def generate(out: Path) -> None:
    """protoc every proto into `out`; its file names become the modules' import paths."""
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(path) for path in PROTOS.glob("*.proto"))
    args = [f"-I{PROTOS}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}"]
    args += [f"--grpc_python_out={out}", *protos]
    if protoc.main(["protoc", *args]) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(protos)}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            package = Path(self.get_package_dir(PACKAGE))
        else:
            package = Path(self.build_lib, *PACKAGE.split("."))
        generate(package / "generated")


setup(cmdclass={"build_py": BuildPyWithProtos})
