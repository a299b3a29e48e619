"""`sidegate logs`: every service's log, Triton's included, read from $SIDEGATE_HOME/logs."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from ext_proc.cli import SERVICES, main


def test_logs_shows_one_service_or_all_with_a_prefix(sidegate_home: Path) -> None:
    (sidegate_home / "logs").mkdir(parents=True)
    for name in ("envoy", "ext_proc", "triton"):
        (sidegate_home / "logs" / f"{name}.log").write_text(f"{name} first\n{name} second\n{name} last\n")

    one = CliRunner().invoke(main, ["logs", "triton", "-n", "2"])
    assert one.exit_code == 0, one.output
    assert one.output.splitlines() == ["triton second", "triton last"]

    every = CliRunner().invoke(main, ["logs", "-n", "1"])
    assert every.exit_code == 0, every.output
    assert every.output.splitlines() == [f"{n:<9}| {n} last" for n in ("envoy", "ext_proc", "triton")]


def test_logs_names_the_services_it_knows(sidegate_home: Path) -> None:
    out = CliRunner().invoke(main, ["logs", "tritonserver"])
    assert out.exit_code == 2
    for name in SERVICES:
        assert name in out.output
