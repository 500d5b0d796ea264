"""The record format: typed round trip, stable keys, older files, and JSONL damage handled (never silently)."""
import json

import pytest

from steer_eval.errors import RecordFileError
from steer_eval.runs.records import Record, Request, append_records, load_records, read_records, read_rows


def _record(index=0, **changes):
    request = Request(f"p{index}", "Warum ist der Himmel blau? \u2014 \"quoted\"", ("german", "words_10_50"),
                      "hybrid", "native_and", sample=2, paraphrase_seed=7)
    fields = dict(request=request, response="Der Himmel ist blau.\nZweite Zeile \u00e4\u00f6\u00fc",
                  per_behavior={"german": True, "words_10_50": False},
                  scorer={"scorer": "steer_eval.scoring.verify", "version": 1, "verifiers": []},
                  generation={"max_new_tokens": 8, "temperature": 0.7, "top_p": 1.0, "seed": 2, "stop": ["\n\n"]},
                  steering=("german", " and", "words_10_50"), instruction="Antworte auf Deutsch.", backend="vllm",
                  model="smollm2-135m", run="abc123def456", extra={"judge": {"score": 1.5}})
    fields.update(changes)
    return Record(**fields)


def test_round_trip_keeps_every_field():
    record = _record()
    assert Record.from_json(json.loads(json.dumps(record.to_json()))) == record
    assert Request.from_json(record.request.to_json()) == record.request
    assert record.followed is False and record.to_json()["followed"] is False


def test_key_distinguishes_everything_but_the_text():
    base = Request("p", "text", ("german",), "steering", "composition")
    variants = [Request("q", "text", ("german",)), Request("p", "text", ("french",)),
                Request("p", "text", ("german",), "text"), Request("p", "text", ("german",), "steering", "native_and"),
                Request("p", "text", ("german",), sample=1), Request("p", "text", ("german",), paraphrase_seed=1)]
    assert len({base.key, *(v.key for v in variants)}) == 1 + len(variants)
    assert Request("p", "other text", ("german",)).key == base.key
    assert Request("p|x", "t", ("a",)).key != Request("p", "t", ("x|a",)).key  # no separator collisions


def test_older_records_are_read_and_unjudged_ones_judged():
    old = {"id": "p1", "prompt": "p", "behaviors": ["uppercase"], "control_method": "steering",
           "mode": "composition", "response": "ALL CAPS"}
    record = Record.from_json(old)
    assert record.prompt_id == "p1" and record.per_behavior == {"uppercase": True}
    assert record.scorer["verifiers"][0]["verifier"] == "is_uppercase"


def test_append_and_read_back(tmp_path):
    path = tmp_path / "r.jsonl"
    records = [_record(i) for i in range(3)]
    append_records(path, records[:2])
    append_records(path, records[2:])
    assert list(read_records(path)) == records == load_records(path)
    assert "\u00e4" in path.read_text(encoding="utf-8")  # stored as UTF-8, not escaped


@pytest.mark.parametrize("cut", [1, 25, -1])
def test_a_last_line_cut_short_is_reported_ignored_and_removed_on_append(tmp_path, caplog, cut):
    path = tmp_path / "r.jsonl"
    append_records(path, [_record(0), _record(1)])
    text = path.read_bytes()
    lines = text.splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:cut if cut > 0 else len(lines[1]) - 2])
    assert [r.prompt_id for r in read_records(path)] == ["p0"]
    assert "cut short" in caplog.text
    append_records(path, [_record(2)])
    assert [r.prompt_id for r in read_records(path)] == ["p0", "p2"]
    assert path.read_bytes().count(b"\n") == 2


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    append_records(path, [_record(0)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    assert [r.prompt_id for r in read_records(path)] == ["p0"]
    append_records(path, [_record(1)])
    assert [r.prompt_id for r in read_records(path)] == ["p0", "p1"]


def test_a_damaged_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    append_records(path, [_record(0), _record(1), _record(2)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:30] + "\n" + lines[2])
    with pytest.raises(RecordFileError, match="line 2 is not a JSON record"):
        list(read_rows(path))
    path.write_bytes(b"\xff\xfe\n" + lines[2].encode())
    with pytest.raises(RecordFileError, match="line 1 is not UTF-8"):
        list(read_rows(path))


def test_rows_that_are_not_records_are_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(RecordFileError, match="not a steer-eval record"):
        list(read_records(path))
    with pytest.raises(RecordFileError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl")
