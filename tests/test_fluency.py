"""Fluency under the unsteered model, on the tiny model: the exact log-probabilities, resume, never two models."""
import json

import pytest
import torch

from steer_eval.errors import UserError
from steer_eval.judges.fluency import read_scores, score_records, sidecar_path, with_fluency
from steer_eval.runs.records import Record, Request, append_records, iter_records


def _records(path):
    rows = [("p1", "Why is the sky blue?", ["german"], "steering", "Der Himmel ist blau."),
            ("p2", "Name a fruit.", ["spanish", "lowercase"], "text", "una manzana una manzana una manzana"),
            ("p3", "Say nothing.", ["french"], "hybrid", "")]
    append_records(path, [Record(Request(pid, prompt, behaviors, method), response, {b: True for b in behaviors},
                                 {}, {}, run="r1") for pid, prompt, behaviors, method, response in rows])
    return list(iter_records(path))


def _independent_mean_logprob(backend, prompt, response):
    """Chat template of the prompt alone, then the response: a plain forward pass over token ids."""
    context = backend.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True)
    context_ids = backend.tokenizer.encode(context, add_special_tokens=False)
    target = backend.tokenizer.encode(response, add_special_tokens=False)
    ids = torch.tensor([context_ids + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(backend.model(input_ids=ids).logits[0, len(context_ids) - 1:-1].float(), -1)
    return logprobs.gather(1, torch.tensor(target).unsqueeze(1)).sum().item() / len(target)


def test_scores_equal_an_independent_forward_pass_and_resume(tiny_hf, tmp_path):
    records = _records(tmp_path / "records.jsonl")
    sidecar = score_records(tmp_path / "records.jsonl", tiny_hf, batch_size=2, progress=False)
    assert sidecar == sidecar_path(tmp_path / "records.jsonl") == tmp_path / "records.fluency"
    scores = read_scores(sidecar)
    for record in records[:2]:  # steering tokens and instructions play no part: the plain prompt only
        expected = _independent_mean_logprob(tiny_hf, record.request.prompt, record.response)
        assert scores["r1", record.key] == pytest.approx(expected, abs=1e-4)
    assert scores["r1", records[2].key] is None  # an empty response has no tokens to score
    merged = list(with_fluency(iter_records(tmp_path / "records.jsonl"), scores, sidecar))
    assert [r.quality.get("fluency") for r in merged] == [scores["r1", r.key] for r in records]

    lines = sidecar.read_bytes().splitlines()
    sidecar.write_bytes(b"\n".join(lines[:2]) + b"\n" + lines[2][:10])  # a crash cut the last line short
    score_records(tmp_path / "records.jsonl", tiny_hf, progress=False)
    rows = [json.loads(line) for line in sidecar.read_text().splitlines()]  # the cut line removed before appending
    assert sorted(row["key"] for row in rows) == sorted(r.key for r in records)  # each once, the cut one again
    before = sidecar.read_bytes()
    score_records(tmp_path / "records.jsonl", tiny_hf, progress=False)
    assert sidecar.read_bytes() == before  # complete: nothing scored twice


def test_scores_of_another_model_are_refused(tiny_hf, tmp_path):
    _records(tmp_path / "records.jsonl")
    row = {"key": "x", "run": "r1", "fluency": -1.0, "scorer": "abc/float32"}
    (tmp_path / "records.fluency").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match="fluency scores of another model"):
        score_records(tmp_path / "records.jsonl", tiny_hf, progress=False)


def test_no_records_is_one_clear_error(tiny_hf, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="no records in"):
        score_records(tmp_path / "empty.jsonl", tiny_hf, progress=False)
