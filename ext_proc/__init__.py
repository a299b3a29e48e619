"""sidegate's ext_proc package: the gateway's Python side.

The public surface is small and lives here; everything else is internal and may move:

* :func:`load_config`, :func:`build_config`, :class:`Config`, :class:`ConfigError`: read and check
  a gateway config (what ``sidegate validate`` does);
* :func:`main`: the ``sidegate`` command line (``ext_proc.cli:main`` is the console script).

Inside, by role (README "Layout"): ``control/`` starts processes and writes files, ``dataplane/``
is the gRPC edge Envoy talks to, ``chat/`` decides what a chat request becomes, ``models/`` are
the model clients, ``wire/`` the API formats; ``config``, ``errors``, ``names``, ``telemetry``,
``metrics`` and ``processor`` are what every side uses.
"""

from ext_proc.config import Config, ConfigError, build_config, load_config

__all__ = ["Config", "ConfigError", "build_config", "load_config", "main"]


def main() -> None:
    """The ``sidegate`` command line (imported on call: the control side is not loaded by the request path)."""
    from ext_proc.control.cli import main as cli_main

    cli_main()
