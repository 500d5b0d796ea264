"""The record format: typed round trip, stable keys, older files, and JSONL damage handled (never silently)."""
import json

import pytest

from steer_eval.errors import RecordFileError
from steer_eval.runs.records import (Record, Request, append_records, append_rows, load_records, read_records,
                                     read_rows)


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


# --- one crash rule for every JSONL file of the package -----------------------------------------------------------

def _fluency_rows(path):
    from steer_eval.judges.fluency import read_scores
    return [{"key": key, "fluency": score} for (_, key), score in read_scores(path).items()]


def _judge_cache_rows(path):
    from steer_eval.judges.llm import _read_cache
    return [{"key": key} for key in _read_cache(path)]


def _training_log_rows(path):
    return list(read_rows(path))


def _records_rows(path):
    return [{"key": record.prompt_id} for record in read_records(path)]


FILE_KINDS = {  # name: (a row of that file as its writer writes it, the package's reader of that file)
    "records": (lambda i: _record(i).to_json(), _records_rows),
    "fluency sidecar": (lambda i: {"key": f"k{i}", "run": "r", "fluency": -1.5, "tokens": 3, "scorer": "s"},
                        _fluency_rows),
    "judge cache": (lambda i: {"key": f"k{i}", "judge_model": "j", "rubric_version": 1, "relevance": 2,
                               "fluency": 1}, _judge_cache_rows),
    "training log": (lambda i: {"step": i, "loss": 0.5}, _training_log_rows),
}


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_jsonl_file_repairs_a_last_line_cut_short_and_says_so(kind, tmp_path, caplog):
    row, read = FILE_KINDS[kind]
    path = tmp_path / "file.jsonl"
    append_rows(path, [row(0), row(1)])
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) - 10])  # a crash in the middle of writing the second line
    assert len(read(path)) == 1
    assert "(line 2) was cut short" in caplog.text
    caplog.clear()
    append_rows(path, [row(2)])  # the writer's next append removes the cut line first
    assert "removed a last line cut short" in caplog.text
    assert len(read(path)) == 2 and path.read_bytes().count(b"\n") == 2


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_jsonl_file_refuses_a_broken_middle_line_naming_file_and_line(kind, tmp_path):
    row, read = FILE_KINDS[kind]
    path = tmp_path / "file.jsonl"
    append_rows(path, [row(0), row(1), row(2)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[1][:15] + b"\n" + lines[2])
    with pytest.raises(RecordFileError) as error:
        read(path)
    assert str(error.value).startswith(f"{path} line 2 ") and "\n" not in str(error.value)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_every_jsonl_file_refuses_a_folder_in_its_place(kind, tmp_path):
    path = tmp_path / "file.jsonl"
    path.mkdir()
    with pytest.raises(RecordFileError, match=f"{path} is a folder where a JSONL file belongs"):
        FILE_KINDS[kind][1](path)
    with pytest.raises(RecordFileError, match=f"{path} is a folder"):
        append_rows(path, [FILE_KINDS[kind][0](0)])


def test_a_broken_last_line_is_refused_not_dropped(tmp_path):
    path = tmp_path / "file.jsonl"
    append_rows(path, [{"step": 1}])
    with path.open("ab") as handle:
        handle.write(b"not json at all")  # not the start of a JSON object: damage, not a crash
    with pytest.raises(RecordFileError, match="line 2 is not a JSON record"):
        list(read_rows(path))
    with pytest.raises(RecordFileError, match="line 2 is not a JSON record"):
        append_rows(path, [{"step": 2}])
    assert path.read_bytes().endswith(b"not json at all")  # nothing removed
