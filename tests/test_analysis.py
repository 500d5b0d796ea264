import pytest

from steer_eval.analysis import by_combination, combination_key, summarize


def rec(order, followed, per=None):
    return {"behaviors": list(order), "followed": followed, "per_behavior": per or {b: followed for b in order}}


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
                                 "order_variance": 0.0, "order_variance_max": 0.0}
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

    from steer_eval.report import load_records

    rows = [{"behaviors": ["uppercase"], "response": "ALL CAPS HERE", "control_method": "steering", "mode": "composition"},
            {"behaviors": ["uppercase"], "response": "not caps", "control_method": "steering", "mode": "composition"}]
    payload = "\n".join(json.dumps(r) for r in rows).encode()
    archive = tmp_path / "records.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("records/a.jsonl")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    assert [r["followed"] for r in load_records(archive)] == [True, False]
