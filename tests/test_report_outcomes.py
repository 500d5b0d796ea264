"""report.outcomes: the column summaries equal the record-level rules of report.analysis (the per-record objects
group_summaries kept before), on simulated records with duplicates, re-judged copies and incomplete order sets;
and they stay within 40 bytes a record."""
import itertools
import random
import tracemalloc

import pytest

from steer_eval.report.analysis import summarize
from steer_eval.report.outcomes import group_summaries, setting_of, summarize_settings
from steer_eval.runs.records import Record, Request

BEHAVIORS = ("german", "french", "lowercase", "uppercase", "json", "words_10_50", "sentences_2")
SIMULATED = {"scorer": "steer_eval.backends.simulate", "version": 1}
VERIFIED = {"scorer": "steer_eval.scoring.verify", "version": 2}


def _record(rng, prompt, order, control, seed=0, quality=True):
    verdicts = {b: rng.random() < 0.6 for b in order}
    fields = {"repetition": rng.random(), "distinct_2": rng.random(), "hit_limit": rng.random() < 0.2}
    if rng.random() < 0.5:
        fields["fluency"] = -rng.random() * 3
    return Record(Request(f"p{prompt}", "prompt", order, control, "composition", paraphrase_seed=seed), "r",
                  verdicts, VERIFIED if quality else SIMULATED, {}, run="r1", quality=fields if quality else {})


def _simulated_records(seed=0, prompts=12):
    rng = random.Random(seed)
    records = []
    for k in (1, 2, 3, 4):
        for combination in itertools.combinations(BEHAVIORS, k):
            if rng.random() > (1.0 if k < 3 else 0.25):
                continue
            orders = list(itertools.permutations(combination))
            if rng.random() < 0.2:  # an incomplete order set: one order never ran
                orders.pop(rng.randrange(len(orders)))
            for order in orders:
                for prompt in range(prompts):
                    if rng.random() < 0.1:
                        continue  # this prompt never ran in this order
                    for control in ("steering", "text"):
                        records.append(_record(rng, prompt, order, control, quality=k < 4))
                        if rng.random() < 0.05:  # a second paraphrase of the same prompt and order
                            records.append(_record(rng, prompt, order, control, seed=1, quality=k < 4))
    duplicates = [rng.choice(records) for _ in range(len(records) // 20)]
    rejudged = [Record(r.request, r.response, {b: not v for b, v in r.per_behavior.items()}, r.scorer, {},
                       run=r.run, quality={"repetition": 0.5}) for r in (rng.choice(records) for _ in range(200))]
    mixed = records + duplicates + rejudged
    rng.shuffle(mixed)
    return mixed


def _reference(records):
    """What group_summaries computed with one Python object per record: the first record of each key, then
    analysis.summarize, and quality sums in the records' order."""
    firsts: dict = {}
    for record in records:
        firsts.setdefault(setting_of(record), {}).setdefault(hash(record.key), record)
    summaries = {}
    for setting, kept in sorted(firsts.items()):
        fields = ("repetition", "distinct_2", "hit_limit", "fluency")
        carrying = [r.quality for r in kept.values() if r.quality]
        means = {name: sum(float(q[name]) for q in carrying if q.get(name) is not None)
                 / max(1, sum(q.get(name) is not None for q in carrying)) for name in fields}
        means = {name: value if any(q.get(name) is not None for q in carrying) else None
                 for name, value in means.items()}
        summaries[setting] = {**summarize(list(kept.values())),
                              "quality": {"records": len(carrying), **means} if carrying else {}}
    return summaries


@pytest.mark.parametrize("seed", [0, 1])
def test_column_summaries_equal_the_record_level_rules(seed):
    records = _simulated_records(seed)
    assert len(records) > 3000 and {len(r.behaviors) for r in records} == {1, 2, 3, 4}
    expected = _reference(records)
    assert group_summaries(iter(records)) == expected
    assert any(s["all"]["incomplete_records"] for s in expected.values())  # the case the rules are about


def test_combinations_carry_order_accuracy_and_complete_set_delta():
    records = _simulated_records(2)
    for setting, found in summarize_settings(records).items():
        assert sum(len(r.order_accuracy) for r in found.combinations) >= found.summary["all"]["combinations"]
        for result in found.combinations:
            if result.complete_order_accuracy is None:
                assert result.order_delta_max is None


def test_a_setting_holds_at_most_40_bytes_a_record():
    rng = random.Random(5)
    orders = [order for combination in itertools.combinations(BEHAVIORS, 3)
              for order in itertools.permutations(combination)]
    records = [Record(Request(f"p{prompt}", "prompt", order), "r", {b: rng.random() < 0.5 for b in order},
                      SIMULATED, {}, run="r1") for prompt in range(300) for order in orders]
    summarize_settings(records[:100])  # one-time costs (lazy imports, the behaviour registry) are no record's
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        summarize_settings(iter(records))
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(records) == 63_000 and peak / len(records) <= 40, f"{peak / len(records):.1f} bytes a record"
