"""``python -m bench [PART [ARGS...]] | --list``: run benchmark parts by name.

A part is a module ``bench/<part>.py`` (not starting with ``_``) with a ``main()``. With no PART
every part that exists runs, one after the other; ARGS go to the part's ``main(argv)`` (or, for a
``main()`` without parameters, through ``sys.argv``). Aliases: ``guard`` → ``guard_eval``,
``function_call`` → ``function_call_eval``, ``memory`` → ``overhead`` (when those files exist).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import shlex
import sys
import time
import traceback

from bench._harness import BENCH_DIR, set_command

ALIASES = {"guard": "guard_eval", "function_call": "function_call_eval", "intent": "intent_eval", "memory": "overhead",
           "routing": "routing_eval"}
FIRST = ("overhead",)  # run order with no PART: these first, then the rest by name


def parts() -> list[str]:
    names = sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


def aliases() -> dict[str, str]:
    existing = set(parts())
    return {alias: target for alias, target in ALIASES.items() if target in existing}


def summary_line(name: str) -> str:
    """First line of the part's docstring, read without importing it (parts may import heavy things)."""
    try:
        doc = ast.get_docstring(ast.parse((BENCH_DIR / f"{name}.py").read_text()))
    except (OSError, SyntaxError):
        doc = None
    return (doc or "").strip().split("\n", 1)[0]


def resolve(name: str) -> str | None:
    name = name.removesuffix(".py").replace("-", "_")
    if name in parts():
        return name
    return aliases().get(name)


def run_part(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"bench.{name}")
    main = getattr(module, "main", None)
    if not callable(main):
        print(f"bench/{name}.py has no main()", file=sys.stderr)
        return 2
    old_argv = sys.argv
    sys.argv = [f"python -m bench {name}", *argv]
    set_command(shlex.join(["python", "-m", "bench", name, *argv]))
    try:
        rc = main(argv) if inspect.signature(main).parameters else main()
    except SystemExit as exc:  # argparse and friends
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old_argv
    return rc if isinstance(rc, int) else 0


def print_list() -> None:
    al = aliases()
    for name in parts():
        alias = ", ".join(a for a, t in al.items() if t == name)
        print(f"{name:<22} {summary_line(name)}" + (f"  (alias: {alias})" if alias else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("parts:")
        print_list()
        return 0
    if argv and argv[0] in ("-l", "--list"):
        print_list()
        return 0
    if argv:
        name = resolve(argv[0])
        if name is None:
            print(f"unknown part {argv[0]!r}; parts: {', '.join(parts())}; aliases: "
                  f"{', '.join(f'{a}={t}' for a, t in aliases().items()) or 'none'}", file=sys.stderr)
            return 2
        return run_part(name, argv[1:])
    failed = []
    for name in parts():
        print(f"=== python -m bench {name}", flush=True)
        started = time.monotonic()
        try:
            rc = run_part(name, [])
        except Exception:  # noqa: BLE001 - one broken part must not hide the others
            traceback.print_exc()
            rc = 1
        print(f"=== {name}: exit {rc} after {time.monotonic() - started:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
