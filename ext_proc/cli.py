"""The ``sidegate`` console script's entry point (``ext_proc.cli:main``, fixed by DESIGN.md).

The command line lives in :mod:`ext_proc.control.cli`; this name stays so that installed scripts
and ``pyproject.toml`` keep working.
"""

from ext_proc.control.cli import main

__all__ = ["main"]
