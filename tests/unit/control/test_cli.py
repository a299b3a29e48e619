"""`sidegate logs`: every service's log, Triton's included, read from $SIDEGATE_HOME/logs; what
`sidegate validate` prints for a config that loads with a warning."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from ext_proc.control.cli import SERVICES, main


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


def test_validate_prints_a_config_warning_and_still_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ext_proc.control import cli

    monkeypatch.setattr(cli, "err_console", Console(file=io.StringIO(), width=400))  # rich wraps at the terminal's width otherwise
    config = tmp_path / "sidegate.yaml"
    config.write_text(yaml.safe_dump({
        "version": "v0.1",
        "ext_proc": {"message_timeout": "5s"},
        "prompt_guards": {"input_guards": {"jailbreak": {"on_exception": {"message": "no"}}}},
    }))
    out = CliRunner().invoke(main, ["validate", str(config)])
    assert out.exit_code == 0, out.output
    warned = cli.err_console.file.getvalue()
    assert f"config warning {config}: ext_proc.message_timeout: 5 s is shorter than" in warned
    assert "prompt_guard 10 s (model_server.models.prompt_guard.timeout)" in warned and "= 12 s" in warned


def test_logs_of_triton_replicas(sidegate_home: Path) -> None:
    (sidegate_home / "logs").mkdir(parents=True)
    for name in ("ext_proc", "triton-1", "triton-2"):
        (sidegate_home / "logs" / f"{name}.log").write_text(f"{name} last\n")
    every = CliRunner().invoke(main, ["logs", "triton", "-n", "1"])
    assert every.exit_code == 0, every.output
    assert every.output.splitlines() == ["triton-1 | triton-1 last", "triton-2 | triton-2 last"]
    one = CliRunner().invoke(main, ["logs", "triton-2", "-n", "1"])
    assert one.output.splitlines() == ["triton-2 last"]


def test_validate_counts_agent_listeners_and_routing_preferences(monkeypatch: pytest.MonkeyPatch) -> None:
    """plano's agent-only configs have no prompt targets: the summary names what they do set up."""
    from ext_proc.control import cli

    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=400))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    published = Path(__file__).parents[2] / "data" / "arch_configs" / "plano-HEAD"
    travel = published / "demos__agent_orchestration__travel_agents__config.yaml"
    out = CliRunner().invoke(main, ["validate", "--no-envoy", str(travel)])
    assert out.exit_code == 0, out.output
    assert cli.console.file.getvalue().strip() == (
        f"ok {travel}: 2 provider(s), 0 prompt target(s), 0 endpoint(s), agent listener travel_booking_service (:8001) with 2 agent(s)")

    monkeypatch.setattr(cli, "console", Console(file=io.StringIO(), width=400))
    template = published / "cli__planoai__templates__preference_aware_routing.yaml"
    out = CliRunner().invoke(main, ["validate", "--no-envoy", str(template)])
    assert out.exit_code == 0, out.output
    assert "provider(s) with 2 routing preference(s), 0 prompt target(s)" in cli.console.file.getvalue()
