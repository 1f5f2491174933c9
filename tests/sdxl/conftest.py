"""The SDXL tests run the real diffusers, transformers and torch (triton included).

Importing that stack can leave a file object to the garbage collector, and pytest turns
whatever is collected during a test into an error of that test (one run failed so, while
triton's compiler module was being imported). The leak is theirs, not this project's:
only these tests let it pass.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytestmark)
