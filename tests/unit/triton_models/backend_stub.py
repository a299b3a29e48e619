"""Run a model's ``1/model.py`` in process: a stand-in for Triton's module, and
``sidegate_models.backend`` imported afresh against it (it binds the module at import)."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

from testkit.triton_stub import fake_pb_utils

_NAMES = ("triton_python_backend_utils", "sidegate_models.backend")


@contextlib.contextmanager
def stub_backend(pb_utils: types.ModuleType | None = None) -> Iterator[types.ModuleType]:
    """``sys.modules["triton_python_backend_utils"]`` is ``pb_utils`` (default: a new
    :func:`testkit.triton_stub.fake_pb_utils`) inside the block, and the next import of
    ``sidegate_models.backend`` uses it; both are put back after."""
    saved = {name: sys.modules.get(name) for name in _NAMES}
    sys.modules["triton_python_backend_utils"] = pb = pb_utils or fake_pb_utils()
    sys.modules.pop("sidegate_models.backend", None)
    try:
        yield pb
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
