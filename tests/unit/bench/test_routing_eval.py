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


def test_the_plano_file_holds_code_understanding_rows_with_their_halves_and_the_template_two_preferences() -> None:
    plano = routing_eval.read_rows(routing_eval.PLANO_SET_PATH)
    assert len(plano) == 41 and len({key for key, *_ in plano}) == 41
    for key, label, half, _snippet in plano:
        assert label == "code understanding" and half == ("dev" if int(key[:8], 16) % 2 == 0 else "test")
    overridden = {key for key, *_ in plano} & {key for key, *_ in rows()}
    assert len(overridden) == 1  # "explain me this code ...": none where no preference covered it
    assert [p.name for p in routing_eval.plano_preferences()] == ["code understanding", "code generation"]


def test_plano_rows_keep_code_generation_and_read_every_other_label_as_none() -> None:
    Item = routing_eval.Item
    items = [Item("a", "code generation", "dev", "write a parser"), Item("b", "summarization", "test", "summarize this"),
             Item("c", "none", "dev", "explain me this code: x = 1")]
    out = routing_eval.plano_items(items, {"c": ("code understanding", "dev"), "d": ("code understanding", "test")},
                                   {"d": "what does this function do? def f(): pass"})
    assert [(it.key, it.label, it.half) for it in out] == [("a", "code generation", "dev"), ("b", "none", "test"),
                                                          ("c", "code understanding", "dev"), ("d", "code understanding", "test")]
