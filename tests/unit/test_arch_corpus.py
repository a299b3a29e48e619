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

# file -> (key path, words of the error): refused by sidegate, with the reason. Only files Arch's own CLI
# refuses too (MANIFEST.tsv's arch_refuses column says where and how); whatever Arch accepts, sidegate accepts
# (with warnings: a ratelimit for a model no provider serves, an in_path parameter absent from the path, ...)
REFUSED = {
    "0.1.9/docs__source__build_with_arch__includes__multi_turn__prompt_targets_multi_turn.yaml": (
        "prompt_targets[0].endpoint.name", "rag_energy_source_agent"),
}


def _env(path: Path) -> dict[str, str]:
    return {var: f"dummy-{var.lower()}" for var in _VAR.findall(path.read_text())}


def test_the_corpus_is_complete() -> None:
    assert len(ROWS) == 109
    assert {r["tag"] for r in ROWS} == {"0.1.0", "0.1.9", "0.2.0", "0.2.8", "0.3.0", "0.3.22", "0.4.0", "plano-HEAD"}
    assert set(REFUSED) == {r["file"] for r in ROWS if r["arch_refuses"]}  # refused exactly where Arch refuses


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
    assert sum(ok for ok, _ in by_tag.values()) == len(ROWS) - len(REFUSED) == 108
