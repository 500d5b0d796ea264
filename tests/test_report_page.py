"""`steer-eval report`: one self-contained HTML page of runs. Its numbers, the seeded choice of the responses it
embeds, the flipping prompts and the escaping of untrusted text, checked on the page's data without a browser
(tests/test_report_browser.py opens it in chromium)."""
import json
import random
import re
from pathlib import Path

import pytest

from steer_eval.report.compare import load_run
from steer_eval.report.page.build import page_data, write_report
from steer_eval.report.page.samples import SampleRule, collect, order_names
from steer_eval.runs.records import Record, Request, append_records, load_records
from steer_eval.scoring.quality import measure
from steer_eval.scoring.verdict import explain, scorer_spec, verify
from tests.cli_in_process import cli

ROOT = Path(__file__).resolve().parents[1]
REAL_GRID = ROOT / "results" / "grid_2actors"

GERMAN_SHORT = "Das ist eine kurze Antwort auf die Frage, und sie ist auf Deutsch geschrieben. Mehr gibt es nicht zu sagen."
GERMAN_LONG = " ".join(["Das ist ein langer deutscher Satz über das Wetter und den Garten."] * 8)
ENGLISH_SHORT = "This is a short answer in English, with enough words to be counted as a real reply here."
HOSTILE = "</script><script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\"> <!-- & -->"


def response_for(prompt_index: int, order: tuple, control: str) -> str:
    """Deterministic answers with order effects: some prompts flip between the two orders of a pair."""
    if prompt_index == 0:
        return HOSTILE
    if len(order) == 1:
        return GERMAN_SHORT if order == ("german",) or prompt_index % 3 else ENGLISH_SHORT
    if prompt_index % 2:  # flips: holds as listed, fails reversed
        return GERMAN_SHORT if order[0] == "german" else GERMAN_LONG
    return GERMAN_SHORT if control == "text" else ENGLISH_SHORT


def make_records(prompts: int = 8) -> list[Record]:
    records = []
    for index in range(prompts):
        prompt = f"Question {index}: what is <b>bold</b> & why?"
        for control in ("steering", "text"):
            for order in (("german",), ("words_10_50",), ("german", "words_10_50"), ("words_10_50", "german")):
                text = response_for(index, order, control)
                steering = [] if control == "text" else [order[0]] if len(order) == 1 else [order[0], "<and>", order[1]]
                records.append(Record(Request(f"p{index:02d}", prompt, order, control), text,
                                      verify(order, text).per_behavior, scorer_spec(order), {"max_new_tokens": 64},
                                      steering, "respond in German" if control == "text" else None, "hf", "tiny",
                                      "run1", measure(text)))
    return records


@pytest.fixture
def grid(tmp_path) -> Path:
    path = tmp_path / "grid" / "records.jsonl"
    append_records(path, make_records())
    return path


EVERYTHING = SampleRule(cases_per_k=10_000, flip_cases=10_000, failures_per_setting=10_000, flips_listed=10_000)


def test_numbers_are_analyzes_numbers(grid):
    runs, _, _ = collect([grid], ["g"], SampleRule())
    assert {key: s.summary for key, s in runs[0].settings.items()} == load_run(grid).summaries


def test_flipping_prompts_are_those_the_records_show(grid):
    runs, _, _ = collect([grid], ["g"], EVERYTHING)
    outcomes = {}
    for record in load_records(grid):
        if len(record.behaviors) == 2:
            outcomes.setdefault((record.control_method, record.prompt_id), set()).add(record.followed)
    expected = {key for key, seen in outcomes.items() if seen == {True, False}}
    found = {(setting[0], prompt) for setting in runs[0].settings if setting[2] == 2
             for prompt in runs[0].flips(setting, "german+words_10_50")}
    assert found == expected and len(expected) == 8  # the odd prompts p01..p07, in both control methods


def test_with_room_for_everything_every_record_is_embedded_once(grid):
    runs, cases, _ = collect([grid], ["g"], EVERYTHING)
    assert sorted(s["key"] for s in runs[0].samples) == sorted(r.key for r in load_records(grid))
    assert len(cases) == 8 * 3  # 8 prompts x (german, words_10_50, german+words_10_50)


def test_the_choice_is_seeded_and_does_not_depend_on_record_order(tmp_path):
    records = make_records(40)
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    append_records(tmp_path / "a.jsonl", records)
    append_records(tmp_path / "b.jsonl", shuffled)
    rule = SampleRule(cases_per_k=5, flip_cases=0, failures_per_setting=3)

    def chosen(path, chosen_rule):
        return sorted(s["key"] for s in collect([path], ["x"], chosen_rule)[0][0].samples)

    assert chosen(tmp_path / "a.jsonl", rule) == chosen(tmp_path / "b.jsonl", rule)
    assert chosen(tmp_path / "a.jsonl", rule) != chosen(tmp_path / "a.jsonl", SampleRule(7, 5, 0, 3))
    runs, cases, _ = collect([tmp_path / "a.jsonl"], ["x"], rule)
    assert len(cases) == 5 * 2  # five prompts per k (k = 1: two singles share the k's 5 cases)
    failing = [s for s in runs[0].samples if s["kept_as"] == "failure"]
    assert all(not s["followed"] for s in failing)
    per_setting = {}
    for sample in failing:
        key = (sample["control"], sample["k"])
        per_setting[key] = per_setting.get(key, 0) + 1
    assert max(per_setting.values()) <= 3


def test_each_combination_with_a_flip_gets_a_flipping_case(tmp_path):
    append_records(tmp_path / "r.jsonl", make_records(40))
    runs, cases, _ = collect([tmp_path / "r.jsonl"], ["x"], SampleRule(cases_per_k=0, flip_cases=5,
                                                                         failures_per_setting=0))
    assert len(cases) == 1  # one combination has flips: its flipping case with the smallest hash
    combination, prompt = next(iter(cases))
    assert combination == "german+words_10_50" and int(prompt[1:]) % 2 == 1
    orders = {s["order"] for s in runs[0].samples}
    assert orders == set(order_names(combination))  # every order and control method of that prompt
    assert {s["control"] for s in runs[0].samples} == {"steering", "text"}


def test_reasons_agree_with_the_verdicts():
    texts = [GERMAN_SHORT, GERMAN_LONG, ENGLISH_SHORT, "", "12345", "HELLO WORLD", "hello world", "Hello World",
             '{"answer": 3}', '```json\n{"answer": "x"}\n```', "Eins. Zwei! Drei?"]
    behaviors = ["german", "words_10_50", "lowercase", "uppercase", "title_case", "json", "sentences_3"]
    for text in texts:
        for behavior in behaviors:
            reason = explain([behavior], text)[behavior]
            held = verify([behavior], text).per_behavior[behavior]
            if behavior == "words_10_50":
                words = int(reason.split()[0])
                assert (10 <= words <= 50) == held and reason.endswith("needs 10-50")
            elif behavior == "german":
                assert reason.startswith("language de,") == held, (text, reason)
            elif behavior == "sentences_3":
                assert (reason.split()[0] == "3") == held, (text, reason)
            else:
                assert reason.startswith(("every", "a JSON")) == held, (text, behavior, reason)
    assert explain(["words_10_50"], "one two three") == {"words_10_50": "3 words, needs 10-50"}
    assert explain(["german"], "1 2 3") == {"german": "language none (no letters), needs de"}
    assert explain(["lowercase"], "all fine Here") == {"lowercase": "uppercase 'H' at character 10, needs lowercase"}
    # sentences are counted by the rules of the composition's language, as verify counts them
    text = "Das ist z.B. ein Satz. Und hier ist noch ein Satz."
    assert explain(["german", "sentences_2"], text)["sentences_2"] == "2 sentences, needs 2"
    assert verify(["german", "sentences_2"], text).per_behavior["sentences_2"]


def test_the_page_is_self_contained_and_never_runs_record_text(grid, tmp_path):
    page = write_report([grid], ["grid <b>run</b>"], tmp_path / "page.html", EVERYTHING).read_text()
    assert "window.pwned" in page  # the hostile response is on the page ...
    assert "<script>window.pwned" not in page and "<img src=x" not in page  # ... but only as escaped JSON
    assert page.count("<script") == 2  # the data block and the page's own script
    assert "<b>bold</b>" not in page and "grid <b>run</b>" not in page
    assert re.search(r"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'", page)
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing to fetch: no remote URL anywhere
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)[1])
    assert {s["response"] for s in data["samples"]} >= {HOSTILE}
    assert data["prompts"]["p00"] == "Question 0: what is <b>bold</b> & why?"


def test_page_data_carries_the_order_view(grid):
    runs, _, prompts = collect([grid], ["g"], EVERYTHING)
    data = page_data(runs, prompts, EVERYTHING)
    rows = [row for row in data["runs"][0]["combinations"]]
    assert len(rows) == 2  # german+words_10_50 under steering and under text
    for row in rows:
        assert row["orders"] == ["german>words_10_50", "words_10_50>german"]
        assert row["flips"] == len(row["listed"]) == 4
        for prompt, held, failed in row["listed"]:
            assert int(prompt[1:]) % 2 == 1 and {held, failed} == {1, 2}


def test_several_runs_and_a_run_name_per_run(grid, tmp_path):
    other = tmp_path / "other.jsonl"
    append_records(other, make_records(3))
    result = cli("report", str(grid), str(other), "--html", str(tmp_path / "two.html"), "--name", "a", "--name", "b",
                 "-q")
    assert result.stdout.strip() == str((tmp_path / "two.html").resolve())
    page = (tmp_path / "two.html").read_text()
    assert "<h3>a</h3>" in page and "<h3>b</h3>" in page and "| run |" not in page  # markdown rendered as HTML
    assert "<th>run</th>" in page


def test_a_page_is_rewritten_in_place(grid, tmp_path):
    first = write_report([grid], ["one"], tmp_path / "p.html").read_text()
    second = write_report([grid], ["two"], tmp_path / "p.html").read_text()
    assert "<h3>one</h3>" in first and "<h3>two</h3>" in second and not list(tmp_path.glob(".*partial"))


def test_analyze_writes_the_page_too(grid, tmp_path):
    result = cli("analyze", str(grid.parent), "--html", str(tmp_path / "a.html"))
    assert "| control |" in result.stdout
    assert f"report written to {(tmp_path / 'a.html').resolve()}" in result.stderr
    assert (tmp_path / "a.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("folder_out", "is a folder; give the path of the HTML file"),
    ("names", "two runs would both be called"),
    ("damaged", "line 2"),
    ("unwritable", "cannot write"),
    ("overwrite records", "is not a page steer-eval wrote"),
])
def test_bad_input_is_one_line_and_exit_2(grid, tmp_path, case, message):
    out = str(tmp_path / "page.html")
    if case == "missing":
        args = [str(tmp_path / "nope.jsonl"), "--html", out]
    elif case == "folder_out":
        args = [str(grid), "--html", str(tmp_path)]
    elif case == "unwritable":
        out = str(grid / "page.html")  # a folder that is a file
        args = [str(grid), "--html", out]
    elif case == "overwrite records":  # a slip of the fingers must not replace the records with a page
        out = str(grid)
        args = [str(grid.parent), "--html", out]
        before = grid.read_bytes()
    elif case == "names":
        args = [str(grid), str(grid), "--html", out]
    else:
        damaged = tmp_path / "damaged.jsonl"
        damaged.write_text(grid.read_text().splitlines()[0] + "\n{not json\n" + grid.read_text().splitlines()[1] + "\n")
        args = [str(damaged), "--html", out, "-q"]  # the error comes mid-stream, after the progress bar's start
    result = cli("report", *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    if case == "overwrite records":
        assert grid.read_bytes() == before
    else:
        assert not Path(out).exists()


def test_a_real_grid_page_names_its_identity():
    runs, _, prompts = collect([REAL_GRID], ["grid_2actors"], SampleRule())
    identity = json.loads((REAL_GRID / "records.manifest.json").read_text())["identity"]
    from steer_eval.report.page.build import _identity_html
    text = _identity_html(runs[0])
    for value in (identity["model_fingerprint"], identity["tokens"]["german"], "vllm", "float32", "4,350"):
        assert value in text
    assert "4,350 records were judged by an older scorer" in text  # scorer 1: said, with the way to rejudge
    data = page_data(runs, prompts, SampleRule())
    shown = [s for s in data["samples"] if s["kept_as"] == "case"]
    assert len({(s["combination"], s["prompt_id"]) for s in shown}) >= 40 + 40  # 40 cases per k, plus flips


def test_a_huge_response_is_shown_cut_and_judged_whole(tmp_path):
    text = "Das ist ein Satz. " * 200_000  # 3.6 MB
    order = ("german", "words_10_50")
    record = Record(Request("p0", "x" * 50_000, order, "text"), text, verify(order, text).per_behavior,
                    scorer_spec(order), {}, (), "y" * 30_000)
    append_records(tmp_path / "r.jsonl", [record])
    page = write_report([tmp_path / "r.jsonl"], ["huge"], tmp_path / "p.html")
    assert page.stat().st_size < 1_000_000
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>', page.read_text(),
                                re.S)[1])
    [sample] = data["samples"]
    assert sample["response"].startswith(text[:20_000])
    assert sample["response"].endswith(f"[... {len(text) - 20_000:,} more characters in the record]")
    assert sample["reasons"]["words_10_50"] == "800000 words, needs 10-50"  # of the whole response
    assert len(data["prompts"]["p0"]) < 20_100 and len(sample["instruction"]) < 20_100


def test_judge_scores_of_the_run_reach_its_samples(grid):
    from steer_eval.judges.llm import SCORES_FILE, judge_dir
    from steer_eval.runs.records import append_rows
    records = load_records(grid)
    append_rows(judge_dir(grid) / SCORES_FILE,
                [{"key": records[0].key, "run": "run1", "relevance": 2, "fluency": 1, "combined": 0.75},
                 {"key": records[1].key, "run": "run1", "error": "timeout"}])
    runs, _, _ = collect([grid], ["g"], EVERYTHING)
    judged = {s["key"]: s.get("judge") for s in runs[0].samples}
    assert judged[records[0].key] == {"relevance": 2, "fluency": 1, "combined": 0.75}
    assert judged[records[1].key] is None and sum(j is not None for j in judged.values()) == 1
