
import pytest

from steer_eval.scoring.behaviors import (
    BEHAVIORS,
    BehaviorError,
    compatible_combinations,
    conflict,
    get_behavior,
    is_seen_combination,
    resolve,
)

DESIGN_IDS = {
    "language": ["german", "spanish", "french", "italian", "portuguese"],
    "length": ["words_10_50", "words_50_70", "words_70_90", "words_90_120"],
    "format": ["lowercase", "uppercase", "title_case"],
    "structure": [f"sentences_{n}" for n in range(1, 6)],
    "extra": ["json"],
}


def test_registry_matches_design_table():
    assert {b.id: b.category for b in BEHAVIORS.values()} == {
        bid: cat for cat, ids in DESIGN_IDS.items() for bid in ids}
    assert {b.id for b in BEHAVIORS.values() if b.unseen} == {"german", "title_case", "words_70_90", "sentences_3"}


@pytest.mark.parametrize("behavior", list(BEHAVIORS.values()), ids=lambda b: b.id)
def test_ten_distinct_paraphrases(behavior):
    assert len(behavior.instructions) == 10
    assert len(set(behavior.instructions)) == 10
    assert all(not text.endswith(".") for text in behavior.instructions)


def test_unknown_behavior_lists_known_ones():
    with pytest.raises(BehaviorError, match="unknown behaviour 'klingon'.*german.*json"):
        get_behavior("klingon")


@pytest.mark.parametrize("pair, reason", [
    (("german", "spanish"), "both language"),
    (("lowercase", "title_case"), "both format"),
    (("json", "sentences_2"), "contradict"),
    (("words_10_50", "words_10_50"), "twice"),
])
def test_conflicts_are_named(pair, reason):
    with pytest.raises(BehaviorError, match=reason):
        resolve(pair)


def test_two_behaviour_combinations_count():
    # Cross-category products 5*4+5*3+5*5+5*1+4*3+4*5+4*1+3*5+3*1+5*1 = 124, minus json x sentences_1..5.
    combos = list(compatible_combinations(2))
    assert len(combos) == 119
    assert all(conflict(a, b) is None for a, b in combos)


def test_larger_combinations_are_conflict_free():
    for k in (3, 4):
        for combo in compatible_combinations(k):
            assert len({b.category for b in combo}) == k
            assert not ({"json"} <= {b.id for b in combo} and any(b.category == "structure" for b in combo))


def test_seen_means_no_held_out_behaviour():
    assert is_seen_combination(resolve(["spanish", "words_10_50"]))
    assert not is_seen_combination(resolve(["german", "words_10_50"]))
    assert not is_seen_combination(resolve(["spanish", "sentences_3"]))
