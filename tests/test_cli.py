"""The CLI contract: through the CLI's main(argv) in this process, as the console script calls it; the installed
script itself in a subprocess where only a process shows it (exit status, stdin, a closed pipe)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_in_process import cli

SCRIPT = str(Path(sys.executable).parent / "steer-eval")


def test_the_console_script_refuses_bad_input_with_exit_2_and_one_line():
    result = subprocess.run([SCRIPT, "verify", "--behavior", "klingon", "--text", "x"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("steer-eval: error: unknown behaviour 'klingon'; known behaviours: "
                             + result.stderr.split("known behaviours: ", 1)[1])
    assert len(result.stderr.splitlines()) == 1


def test_a_grid_asked_for_more_prompts_than_its_file_holds_says_so(tmp_path):
    result = cli("grid", "--backend", "simulate", "--model", "sim", "--k", "1", "--num-prompts", "1000",
                 "--dry-run", "--output-dir", str(tmp_path))
    assert "--num-prompts 1000: the bundled test split holds 244 prompts; the grid uses all 244" in result.stderr


def test_behaviors_json():
    rows = json.loads(cli("behaviors", "--json").stdout)
    assert {"id", "category", "unseen"} <= set(rows[0])
    assert {r["id"] for r in rows if r["unseen"]} == {"german", "title_case", "words_70_90", "sentences_3"}


def test_verify_prints_one_verdict():
    text = "Das Wetter ist heute sehr schön und wir gehen später im Park spazieren."
    out = json.loads(cli("verify", "--behavior", "german", "--behavior", "words_10_50", "--text", text).stdout)
    assert out == {"followed": True, "per_behavior": {"german": True, "words_10_50": True}}
    out = json.loads(cli("verify", "--behavior", "uppercase", "--text", text).stdout)
    assert out == {"followed": False, "per_behavior": {"uppercase": False}}


def test_verify_reads_a_megabyte_from_a_file_or_stdin(tmp_path):
    text = "Das Wetter ist heute schön, und wir gehen im Park spazieren. " * 17_000  # ~1 MB: too long for argv
    path = tmp_path / "response.txt"
    path.write_text(text, encoding="utf-8")
    from_file = json.loads(cli("verify", "--behavior", "german", "--behavior", "words_90_120", "--file", str(path)).stdout)
    assert from_file == {"followed": False, "per_behavior": {"german": True, "words_90_120": False}}
    piped = subprocess.run([SCRIPT, "verify", "--behavior", "german", "--behavior", "words_90_120", "--file", "-"],
                           input=text, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and json.loads(piped.stdout) == from_file


@pytest.mark.parametrize("args, message", [
    (("verify", "--behavior", "german", "--file", "/no/such/file"), "cannot read /no/such/file: No such file"),
    (("verify", "--behavior", "german", "--file", "/"), "cannot read /: Is a directory"),
    (("verify", "--behavior", "german", "--text", "x", "--file", "-"), "not allowed with argument"),
    (("verify", "--behavior", "klingon", "--text", "x"), "unknown behaviour 'klingon'; known behaviours: german"),
    (("verify", "--behavior", "german", "--behavior", "french", "--text", "x"), "both language behaviours"),
    (("models", "fetch", "gpt-9"), "unknown embedded model"),
])
def test_user_errors_exit_2_without_traceback(args, message):
    result = cli(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_verify_refuses_a_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Grüße".encode("latin-1"))
    result = cli("verify", "--behavior", "german", "--file", str(tmp_path / "latin1.txt"), check=False)
    assert result.returncode == 2 and "is not UTF-8 text (byte 2)" in result.stderr and "Traceback" not in result.stderr


def test_models_fetch_prints_the_folder(default_model_dir):
    assert cli("models", "fetch", "smollm2-135m").stdout.strip().splitlines()[-1] == str(default_model_dir)


def test_generate_text_and_missing_tokens(tiny_model_dir, tmp_path):
    out = cli("generate", "--model", str(tiny_model_dir), "--control-method", "text", "--steering", "german",
              "--prompt", "Why do cats purr?", "--max-new-tokens", "5", "--verify").stdout.strip().splitlines()
    assert json.loads(out[-1])["per_behavior"].keys() == {"german"}
    result = cli("generate", "--model", str(tiny_model_dir), "--tokens-dir", str(tmp_path), "--steering", "german",
                 "<and>", "words_10_50", "--prompt", "Hi", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "composition mode needs a trained <and>" in result.stderr


def test_infer_writes_records_and_resumes(tiny_model_dir, tmp_path):
    output = tmp_path / "out.jsonl"
    args = ("infer", "--model_path", str(tiny_model_dir), "--steering", "german", "--control-method", "text",
            "--limit", "3", "--max-new-tokens", "4", "--silent", "--output", str(output))
    summary = json.loads(cli(*args).stdout)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert summary["n"] == 3 and len(records) == 3
    assert {"prompt", "response", "followed", "per_behavior", "scorer", "instruction", "run"} <= set(records[0])
    assert (tmp_path / "out.manifest.json").is_file()
    cli(*args)
    assert len(output.read_text().splitlines()) == 3  # resumed: nothing generated twice


def test_infer_into_one_output_never_mixes_runs(tiny_model_dir, tiny_tokens_dir, tmp_path):
    """The issue's cases, as a user types them: another control method, other behaviours, other settings."""
    output = tmp_path / "out.jsonl"
    common = ("infer", "--model_path", str(tiny_model_dir), "--tokens-dir", str(tiny_tokens_dir), "--limit", "2",
              "--silent", "--output", str(output))
    base = (*common, "--max-new-tokens", "4")
    text = json.loads(cli(*base, "--steering", "german", "--control-method", "text").stdout)
    steering = json.loads(cli(*base, "--steering", "german", "--control-method", "steering").stdout)
    assert (text["control_method"], steering["control_method"]) == ("text", "steering")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["control_method"], r["steering"]) for r in rows] == [("text", [])] * 2 + [("steering", ["german"])] * 2
    pair = json.loads(cli(*base, "--steering", "french", "<and>", "uppercase").stdout)
    assert pair["n"] == 2 and set(pair["per_behavior"]) == {"french", "uppercase"}
    result = cli(*common, "--max-new-tokens", "5", "--steering", "german", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "generation max_new_tokens: 4 in the folder, 5 now" in result.stderr and "--restart" in result.stderr
    assert len(output.read_text().splitlines()) == 6


@pytest.mark.parametrize("flag", [("--chunk-size", "0"), ("--max-combinations", "-1"), ("--num-prompts", "-1"),
                                  ("--max-new-tokens", "0")])
def test_grid_refuses_bad_numbers(tmp_path, flag):
    result = cli("grid", "--output-dir", str(tmp_path), *flag, check=False)
    assert result.returncode == 2 and "must be at least 1" in result.stderr and "Traceback" not in result.stderr


def test_grid_missing_tokens_fail_before_generating(tiny_model_dir, tmp_path):
    result = cli("grid", "--model", str(tiny_model_dir), "--backend", "hf", "--tokens-dir", str(tmp_path / "none"),
                 "--k", "2", "--combination", "german+words_10_50", "--output-dir", str(tmp_path / "g"), check=False)
    assert result.returncode == 2 and "needs steering tokens <and>, german, words_10_50" in result.stderr
    assert not (tmp_path / "g" / "records.jsonl").exists()


def test_grid_then_analyze_with_plot(tiny_model_dir, tmp_path):
    out = tmp_path / "grid"
    table = cli("grid", "--model", str(tiny_model_dir), "--backend", "hf", "--control-method", "text", "--k", "1", "2",
                "--combination", "spanish+lowercase", "--combination", "spanish", "--num-prompts", "2",
                "--max-new-tokens", "3", "--output-dir", str(out)).stdout
    assert "| text | - | 2 | 4 | 1 |" in table
    summaries = json.loads(cli("analyze", str(out), "--json", "--plot", str(tmp_path / "plot.png")).stdout)
    assert [(s["k"], s["generations"]) for s in summaries] == [(1, 2), (2, 4)]
    assert all(0 <= s["all"]["accuracy"] <= 1 for s in summaries)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def _v1_record(prompt_id, behaviors, response, followed, scorer="steer_eval.scoring.verify"):
    return {"prompt_id": prompt_id, "prompt": "Tell me about rain.", "behaviors": behaviors, "control_method": "text",
            "mode": "composition", "response": response, "followed": followed,
            "per_behavior": {b: followed for b in behaviors}, "scorer": {"scorer": scorer, "version": 1},
            "generation": {}, "run": "r1"}


def test_analyze_rejudges_records_of_an_older_scorer(tmp_path):
    records = tmp_path / "records.jsonl"
    rows = [_v1_record("p1", ["sentences_2"], "Wait... what? It rained.", False),  # scorer 1 counted 3 sentences
            _v1_record("p2", ["sentences_2"], "It rained. Then it stopped.", True)]
    records.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    stored = cli("analyze", str(records), "--json")
    assert "2 records were judged by an older scorer" in stored.stderr and "--rejudge" in stored.stderr
    assert json.loads(stored.stdout)[0]["all"]["accuracy"] == 0.5
    rejudged = cli("analyze", str(records), "--json", "--rejudge")
    assert "re-judged 2 records with scorer version 2; 1 got a different verdict" in rejudged.stderr
    assert "older scorer" not in rejudged.stderr
    assert json.loads(rejudged.stdout)[0]["all"]["accuracy"] == 1.0


def test_analyze_rejudge_refuses_simulated_records(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(_v1_record("p1", ["german"], "x", True, "steer_eval.backends.simulate")) + "\n")
    result = cli("analyze", str(records), "--rejudge", check=False)
    assert result.returncode == 2 and "simulated responses" in result.stderr and "Traceback" not in result.stderr


def test_score_then_analyze_shows_fluency_next_to_accuracy(tiny_model_dir, tmp_path):
    out = tmp_path / "grid"
    cli("grid", "--model", str(tiny_model_dir), "--backend", "hf", "--control-method", "text", "--k", "1",
        "--combination", "spanish", "--num-prompts", "2", "--max-new-tokens", "4", "--output-dir", str(out))
    scored = cli("score", str(out))
    assert f"fluency scores written to {out / 'records.fluency'}" in scored.stderr
    assert len((out / "records.fluency").read_text().splitlines()) == 2
    summary = json.loads(cli("analyze", str(out), "--json").stdout)[0]
    assert summary["quality"]["fluency"] < 0 and summary["quality"]["hit_limit"] is not None
    assert cli("score", str(out)).returncode == 0  # resumed: nothing left to score
    assert len((out / "records.fluency").read_text().splitlines()) == 2


def test_a_reader_that_stops_early_gets_no_traceback():
    piped = subprocess.run(f"'{SCRIPT}' tokens list | head -1", shell=True, capture_output=True, text=True,
                           timeout=300, executable="/bin/bash")
    assert piped.stdout.startswith("19 steering tokens") and "Traceback" not in piped.stderr


def test_the_command_line_starts_without_torch_or_vllm():
    """Every command builds the whole parser, `serve`'s included: importing it must not import torch, transformers
    or vLLM (torch alone took 1.3 s of every command's start when `serve` imported its default from the backend)."""
    done = subprocess.run([sys.executable, "-c", "import sys, steer_eval.cli.main; print(sorted(m for m in "
                           "('torch', 'transformers', 'vllm') if m in sys.modules))"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
