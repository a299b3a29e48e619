"""Every published Arch / plano config that Arch's own schema accepts passes ``sidegate validate`` (issue 18).

The corpus is tests/data/arch_configs (README.md there says where each file comes from). For each file:
load_config (with every ``$VAR`` it names set to a dummy), the Envoy bootstrap rendered and
``envoy --mode validate`` run on it, i.e. what ``sidegate validate FILE`` does. Warnings are allowed
and printed (``pytest -s``). The few files sidegate refuses on purpose are listed in REFUSED with the
key path and the reason, and must be refused exactly so.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from ext_proc.config import ConfigError, load_config
from ext_proc.control.envoy_check import check_bootstrap

CORPUS = Path(__file__).resolve().parents[1] / "data" / "arch_configs"
ROWS = list(csv.DictReader((CORPUS / "MANIFEST.tsv").open(), delimiter="\t"))
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")

# file -> (key path, words of the error): refused by sidegate, with the reason
REFUSED = {
    # amazon_bedrock is not implemented (Converse API + SigV4): refused with what to do instead
    "0.3.22/demos__use_cases__model_alias_routing__arch_config_with_aliases.yaml": ("llm_providers[7].provider_interface", "amazon_bedrock"),
    "0.4.0/demos__use_cases__model_alias_routing__config_with_aliases.yaml": ("llm_providers[7].provider_interface", "amazon_bedrock"),
    "plano-HEAD/demos__llm_routing__model_alias_routing__config_with_aliases.yaml": ("llm_providers[9].provider_interface", "amazon_bedrock"),
    # chatgpt (ChatGPT subscription through plano's own OAuth) is not a sidegate family, and the config gives no base_url
    "plano-HEAD/demos__llm_routing__chatgpt_subscription__config.yaml": ("model_providers[0].model", "chatgpt"),
    # sidegate's cross-reference checks, which Arch's schema cannot express: mistakes in the published files
    "0.1.0/demos__insurance_agent__arch_config.yaml": ("ratelimits[0].model", "'gpt-4'"),
    "0.1.9/demos__insurance_agent__arch_config.yaml": ("ratelimits[0].model", "'gpt-4'"),
    "0.2.0/demos__insurance_agent__arch_config.yaml": ("ratelimits[0].model", "'gpt-4'"),
    "0.2.8/demos__use_cases__spotify_bearer_auth__arch_config.yaml": ("prompt_targets[0].parameters[0].in_path", "{country}"),
    "0.3.22/demos__use_cases__spotify_bearer_auth__arch_config.yaml": ("prompt_targets[0].parameters[0].in_path", "{country}"),
    "plano-HEAD/demos__integrations__spotify_bearer_auth__config.yaml": ("prompt_targets[0].parameters[0].in_path", "{country}"),
    "0.1.9/docs__source__build_with_arch__includes__multi_turn__prompt_targets_multi_turn.yaml": (
        "prompt_targets[0].endpoint.name", "rag_energy_source_agent"),
    # their agent listener routes to rag_agent, which their top-level agents do not define
    "0.4.0/docs__source__resources__includes__arch_config_full_reference.yaml": ("listeners[0].agents[0].id", "'rag_agent' is not an agent"),
    "plano-HEAD/docs__source__resources__includes__plano_config_full_reference.yaml": ("listeners[0].agents[0].id", "'rag_agent' is not an agent"),
}


def _env(path: Path) -> dict[str, str]:
    return {var: f"dummy-{var.lower()}" for var in _VAR.findall(path.read_text())}


def test_the_corpus_is_complete() -> None:
    assert len(ROWS) == 109
    assert {r["tag"] for r in ROWS} == {"0.1.0", "0.1.9", "0.2.0", "0.2.8", "0.3.0", "0.3.22", "0.4.0", "plano-HEAD"}
    assert set(REFUSED) <= {r["file"] for r in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_sidegate_validate_accepts_the_published_config(row: dict[str, str]) -> None:
    path = CORPUS / row["file"]
    if row["file"] in REFUSED:
        key_path, words = REFUSED[row["file"]]
        with pytest.raises(ConfigError) as info:
            load_config(path, env=_env(path))
        assert info.value.path == key_path and words in info.value.message, str(info.value)
        return
    cfg = load_config(path, env=_env(path))
    for warning in cfg.warnings:
        print(f"{row['file']}: {warning}")
    check_bootstrap(cfg)  # raises EnvoyRefused with Envoy's error


def test_the_corpus_pass_count() -> None:
    by_tag: dict[str, list[int]] = {}
    for r in ROWS:
        by_tag.setdefault(r["tag"], [0, 0])[1] += 1
        by_tag[r["tag"]][0] += r["file"] not in REFUSED
    print("passing / published, by tag:", {tag: f"{ok}/{n}" for tag, (ok, n) in by_tag.items()})
    assert sum(ok for ok, _ in by_tag.values()) == len(ROWS) - len(REFUSED) == 96
