"""bench/routing_eval.py: the routing set's files are what their headers say (labels, fixed halves, no row twice)."""

from __future__ import annotations

from collections import Counter

from bench import routing_eval


def rows() -> list[list[str]]:
    return [row for path in routing_eval.SOURCES.values() for row in routing_eval.read_rows(path)]


def test_every_row_has_a_known_label_and_the_half_its_sha256_gives() -> None:
    labels = {p.name for p in routing_eval.PREFERENCES} | {routing_eval.NONE}
    seen = set()
    for key, label, half, _snippet in rows():
        assert len(key) == 64 and key not in seen  # in neither file twice, nor in both
        seen.add(key)
        assert label in labels
        assert half == ("dev" if int(key[:8], 16) % 2 == 0 else "test")


def test_every_label_is_in_both_halves() -> None:
    count = Counter((label, half) for _, label, half, _ in rows())
    for p in [*routing_eval.PREFERENCES]:
        assert count[(p.name, "dev")] > 0 and count[(p.name, "test")] > 0, p.name
    assert count[(routing_eval.NONE, "dev")] >= 20 and count[(routing_eval.NONE, "test")] >= 20


def test_the_preferences_are_distinct_names() -> None:
    names = [p.name for p in routing_eval.PREFERENCES]
    assert len(set(names)) == len(names)


def test_both_files_are_read() -> None:
    assert len(routing_eval.read_rows(routing_eval.SET_PATH)) == 220
    assert len(routing_eval.read_rows(routing_eval.ADDED_PATH)) == 114
