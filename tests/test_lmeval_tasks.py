"""Task documents and metrics behind tasks/: layout, conflicts, held-out prompts, order variance."""
import itertools
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from steer_eval.steering.assembly import assemble
from steer_eval.scoring.behaviors import BEHAVIORS, compatible_combinations, is_seen_combination, resolve
from steer_eval.lmeval import tasks
from steer_eval.scoring.prompts import bundled_prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose_docs():
    return {(k, split): tasks.compose_documents(k, split) for k in tasks.COMPOSE_PLAN for split in tasks.SPLITS}


def test_every_order_of_each_combination_is_present_and_adjacent(compose_docs):
    for (k, split), docs in compose_docs.items():
        plan = tasks.COMPOSE_PLAN[k]
        block = math.factorial(k) * plan.prompts_per_combination
        assert len(docs) % block == 0
        for start in range(0, len(docs), block):
            combination = docs[start:start + block]
            assert len({d["combination"] for d in combination}) == 1, "a combination's documents are adjacent"
            for prompt_start in range(0, block, math.factorial(k)):  # all orders of one prompt follow each other
                orders = combination[prompt_start:prompt_start + math.factorial(k)]
                assert len({d["prompt_id"] for d in orders}) == 1
                assert sorted(tuple(d["behaviors"]) for d in orders) == sorted(
                    itertools.permutations(orders[0]["behaviors"]))
                assert [d["order_index"] for d in orders] == list(range(math.factorial(k)))


def test_combinations_respect_conflicts_and_split(compose_docs):
    for (k, split), docs in compose_docs.items():
        for doc in docs:
            resolve(doc["behaviors"])  # raises on conflicts
            assert doc["seen"] == (split == "seen") == is_seen_combination(BEHAVIORS[b] for b in doc["behaviors"])
            assert doc["k"] == k and doc["n_orders"] == math.factorial(k)


def test_sizes_follow_the_plan(compose_docs):
    for (k, split), docs in compose_docs.items():
        plan = tasks.COMPOSE_PLAN[k]
        available = sum(is_seen_combination(c) == (split == "seen") for c in compatible_combinations(k))
        combinations = min(available, plan.combinations_per_split or available)
        assert len(docs) == combinations * math.factorial(k) * plan.prompts_per_combination
    assert len({d["combination"] for d in compose_docs[(2, "seen")]}) == 71  # every seen pair
    assert len(tasks.documents("steer_german")) == len(bundled_prompts("test"))


def test_documents_use_only_held_out_test_prompts_and_are_reproducible(compose_docs):
    test_ids = {p.id for p in bundled_prompts("test")}
    assert all(d["prompt_id"] in test_ids for docs in compose_docs.values() for d in docs)
    assert tasks.compose_documents(3, "unseen") == compose_docs[(3, "unseen")]


def test_stock_models_read_exactly_the_text_user_turn(tokenizer):
    doc = tasks.compose_documents(2, "unseen")[0]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": doc["text_input"]}], tokenize=False,
                                             add_generation_prompt=True)
    assembled = assemble(doc["prompt"], doc["behaviors"], tokenizer, control_method="text",
                         instructions=doc["instructions"])
    assert tokenizer.decode(assembled.input_ids) == rendered
    assert assembled.instruction in doc["text_input"]


def test_unknown_task_names_fail_clearly():
    with pytest.raises(ValueError, match="no task compose_9_x: k is one of"):
        tasks.documents("compose_9_x")
    with pytest.raises(ValueError, match="unknown steer-eval task 'steer_klingon'"):
        tasks.documents("steer_klingon")


def outcome(order, prompt, followed):
    return {"behaviors": order.split(">"), "prompt_id": prompt, "followed": followed}


# spanish+lowercase: order A 2/2, order B 0/2 -> delta 1.0, best 1.0
# german+words_10_50: A 1/2, B 2/2 -> delta 0.5, best 1.0
# json+french: only one order ran -> no delta (accuracy 1/1)
HAND_BUILT = [
    outcome("spanish>lowercase", "p1", True), outcome("spanish>lowercase", "p2", True),
    outcome("lowercase>spanish", "p1", False), outcome("lowercase>spanish", "p2", False),
    outcome("german>words_10_50", "p1", True), outcome("german>words_10_50", "p2", False),
    outcome("words_10_50>german", "p1", True), outcome("words_10_50>german", "p2", True),
    outcome("json>french", "p1", True),
]


def test_order_variance_on_hand_built_samples():
    assert tasks.order_variance(HAND_BUILT) == pytest.approx((1.0 + 0.5) / 2)
    assert tasks.order_variance_max(HAND_BUILT) == pytest.approx(1.0)
    assert tasks.best_order_accuracy(HAND_BUILT) == pytest.approx((1.0 + 1.0 + 1.0) / 3)


def test_order_variance_ignores_prompts_missing_from_an_order():
    # p3 ran only in order A (e.g. cut off by --limit): counting it would turn a 0 delta into 1/3
    samples = [outcome("spanish>lowercase", "p1", True), outcome("lowercase>spanish", "p1", True),
               outcome("spanish>lowercase", "p3", False)]
    assert tasks.order_variance(samples) == 0.0
    assert math.isnan(tasks.order_variance([outcome("spanish>lowercase", "p1", True)]))


def test_per_category_mean_skips_samples_without_that_category():
    assert tasks.mean_where_applicable([1.0, None, 0.0, None]) == 0.5
    assert math.isnan(tasks.mean_where_applicable([None, None]))


def test_score_records_verdicts_and_setting():
    doc = tasks.compose_documents(2, "seen")[0]  # spanish + words_10_50
    response = tasks.SteeredResponse("Hola, esto es una respuesta corta en español para la prueba de hoy.",
                                     {"control_method": "hybrid", "mode": "concatenation"})
    values = tasks.score(doc, response, per_category=True, orders=True)
    assert values["accuracy"] == 1.0 and values["acc_language"] == 1.0 and values["acc_length"] == 1.0
    assert values["acc_format"] is None
    assert values["repetition"] == 0.0  # no word of it repeats
    assert values["distinct_2"] == 1.0
    assert tasks.score(doc, "la cidade de la cidade de la cidade")["repetition"] == 1.0
    assert (values["control_method"], values["mode"]) == ("hybrid", "concatenation")
    assert values["order_variance"] == {"behaviors": doc["behaviors"], "prompt_id": doc["prompt_id"], "followed": True}
    assert tasks.score(doc, "plain text")["control_method"] == "text"  # a stock model read the instructions
    cached = pickle.loads(pickle.dumps(response))  # lm-eval's --use_cache pickles responses
    assert cached == response and cached.setting == response.setting


def test_task_yaml_files_are_in_sync_with_their_generator():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tasks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
