"""The caikit runtime's gRPC API: `ccv.ComputerVisionService` on port 8085.

`protos/` holds the `.proto` files under the names the caikit runtime exports, so a
client compiled from the runtime's export and one compiled from these are
interchangeable. Their Python code is generated at build time (setup.py) into
`generated/`, whose modules keep protoc's top-level names (`ccv.…_pb2`,
`computervisionservice_pb2_grpc`, as the caikit sample client imports them); that
folder goes on `sys.path` when this package is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

GENERATED = Path(__file__).with_name("generated")
PROTOS = Path(__file__).with_name("protos")

if not (GENERATED / "computervisionservice_pb2_grpc.py").is_file():
    raise ImportError(
        f"the gRPC code is generated when the package is built; {GENERATED} has none: "
        "reinstall it (`make venv`, or `pip install .`)"
    )
if str(GENERATED) not in sys.path:
    sys.path.append(str(GENERATED))
