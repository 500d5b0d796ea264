import pytest

from steer_eval.report.analysis import by_combination, combination_key, summarize, to_frame


def rec(order, followed, per=None, prompt_id="p"):
    return {"behaviors": list(order), "followed": followed, "per_behavior": per or {b: followed for b in order},
            "prompt_id": prompt_id}


# spanish+lowercase (seen): order A 2/2, order B 0/2 -> mean 0.5, best 1.0, delta 1.0
# german+words_10_50 (unseen, german held out): A 1/2, B 1/2 -> mean 0.5, delta 0
# french (single order): 1/1
RECORDS = [
    rec(["spanish", "lowercase"], True), rec(["spanish", "lowercase"], True),
    rec(["lowercase", "spanish"], False), rec(["lowercase", "spanish"], False),
    rec(["german", "words_10_50"], True), rec(["german", "words_10_50"], False),
    rec(["words_10_50", "german"], False), rec(["words_10_50", "german"], True),
    rec(["french"], True),
]


def test_known_answer():
    summary = summarize(RECORDS)
    assert summary["all"]["combinations"] == 3
    assert summary["all"]["accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert summary["all"]["best_order_accuracy"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert summary["all"]["order_variance"] == pytest.approx(0.5)  # mean of 1.0 and 0.0; single orders excluded
    assert summary["all"]["order_variance_max"] == pytest.approx(1.0)
    assert summary["seen"]["accuracy"] == pytest.approx(0.75)
    assert summary["unseen"] == {"combinations": 1, "accuracy": 0.5, "best_order_accuracy": 0.5,
                                 "order_variance": 0.0, "order_variance_max": 0.0, "complete_combinations": 1,
                                 "incomplete_records": 0}
    assert summary["per_behavior"]["spanish"] == pytest.approx(0.5)


def test_orders_weigh_equally_regardless_of_sample_count():
    records = [rec(["spanish", "json"], True)] * 9 + [rec(["json", "spanish"], False)]
    [result] = by_combination(records)
    assert result.accuracy == pytest.approx(0.5)
    assert result.order_delta_max == pytest.approx(1.0)


def test_combination_key_ignores_order():
    assert combination_key(["words_10_50", "german"]) == combination_key(["german", "words_10_50"])


def test_empty():
    assert summarize([])["all"] == {"combinations": 0}


def test_load_records_judges_unjudged_records_from_a_tarball(tmp_path):
    import io
    import json
    import tarfile

    from steer_eval.runs.records import load_records

    rows = [{"id": "a", "prompt": "p", "behaviors": ["uppercase"], "response": "ALL CAPS HERE",
             "control_method": "steering", "mode": "composition"},
            {"id": "b", "prompt": "p", "behaviors": ["uppercase"], "response": "not caps",
             "control_method": "steering", "mode": "composition"}]
    payload = "\n".join(json.dumps(r) for r in rows).encode()
    archive = tmp_path / "records.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("records/a.jsonl")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert [r.followed for r in load_records(archive)] == [True, False]


def test_incomplete_order_sets_give_no_order_variance():
    # 1 of 2 orders, and 3 of 6 orders: Δmax would compare fewer orders than the combination has.
    records = [rec(["spanish", "json"], True), rec(["german", "lowercase", "words_10_50"], True),
               rec(["lowercase", "german", "words_10_50"], False), rec(["words_10_50", "german", "lowercase"], True)]
    for result in by_combination(records):
        assert result.order_delta_max is None and result.best_order_accuracy is None
        assert result.incomplete_records == len(result.order_accuracy)
    summary = summarize(records)["all"]
    assert summary["order_variance"] is None and summary["incomplete_records"] == 4
    assert summary["accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_to_frame_one_row_per_record_one_column_per_verdict():
    frame = to_frame(RECORDS)
    assert len(frame) == len(RECORDS)
    assert {"verdict_spanish", "verdict_lowercase", "verdict_german", "verdict_french"} <= set(frame.columns)
    assert frame["verdict_french"].isna().sum() == len(RECORDS) - 1
    assert frame.groupby("combination")["followed"].mean()["lowercase+spanish"] == 0.5
