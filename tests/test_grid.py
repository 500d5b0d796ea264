import itertools

from steer_eval.runs.grid import build_grid, combinations_for
from steer_eval.scoring.prompts import Prompt

PROMPTS = [Prompt("a", "Why is the sea salty?"), Prompt("b", "How do bees find flowers?")]


def test_every_order_of_every_combination_is_present_and_adjacent():
    items = build_grid(PROMPTS, [2], ["steering"], ["composition"], only=[["german", "words_10_50"]])
    assert [(i.behaviors, i.prompt_id) for i in items] == [
        (("german", "words_10_50"), "a"), (("german", "words_10_50"), "b"),
        (("words_10_50", "german"), "a"), (("words_10_50", "german"), "b")]


def test_sizes_follow_combinations_times_orders_times_prompts():
    items = build_grid(PROMPTS, [1, 2, 3], ["steering"], ["composition", "concatenation"], max_combinations=5)
    per_k = {k: sum(1 for i in items if len(i.behaviors) == k) for k in (1, 2, 3)}
    # k=1 has one mode; k>1 runs each of the 2 modes; each combination has k! orders.
    assert per_k == {1: 5 * 1 * 2, 2: 5 * 2 * 2 * 2, 3: 5 * 6 * 2 * 2}
    assert len({i.key for i in items}) == len(items)


def test_text_control_ignores_mode():
    items = build_grid(PROMPTS, [2], ["text", "steering"], ["composition", "native_and"], max_combinations=1)
    modes = {(i.control_method, i.mode) for i in items}
    assert modes == {("text", "composition"), ("steering", "composition"), ("steering", "native_and")}


def test_subsample_is_seeded_and_conflict_free():
    first, again = combinations_for(3, 10, seed=1), combinations_for(3, 10, seed=1)
    assert first == again and len(first) == 10
    assert first != combinations_for(3, 10, seed=2)
    for combo in first:
        assert len({b.category for b in combo}) == 3
    assert all(len(set(p)) == 3 for c in first for p in itertools.permutations(b.id for b in c))


def test_a_plan_is_lazy_counted_and_described_without_being_a_list():
    plan = build_grid(PROMPTS, [1, 2], ["steering", "text"], ["composition", "native_and"], max_combinations=3)
    assert not isinstance(plan, list) and len(plan) == sum(1 for _ in plan) == len({r.key for r in plan})
    rows = {(r["k"], r["control_method"], r["mode"]): r for r in plan.describe()}
    assert rows[(2, "steering", "native_and")] == {"k": 2, "control_method": "steering", "mode": "native_and",
                                                   "combinations": 3, "orders": 6, "evaluations": 12}
    assert sum(r["evaluations"] for r in rows.values()) == len(plan)
    assert list(plan) == list(plan)  # iterated again, the same requests in the same order


def test_repeated_prompt_ids_are_refused():
    import pytest

    from steer_eval.errors import UserError
    with pytest.raises(UserError, match="prompt ids must be unique, but a appear"):
        build_grid([*PROMPTS, Prompt("a", "Another text")], [1], ["text"], ["composition"])


def test_first_instruction_uses_the_canonical_wording():
    from steer_eval.steering.assembly import FIRST_INSTRUCTION
    from steer_eval.scoring.behaviors import get_behavior
    plan = build_grid(PROMPTS, [1], ["text"], ["composition"], only=[["german"]], first_instruction=True)
    assert {r.paraphrase_seed for r in plan} == {FIRST_INSTRUCTION}
    from steer_eval.steering.assembly import choose_paraphrase
    assert choose_paraphrase(get_behavior("german"), "any", FIRST_INSTRUCTION) == get_behavior("german").instructions[0]
