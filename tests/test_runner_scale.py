"""The runner's bookkeeping on the simulate backend (no model): streaming plans, resume by key hashes, dry runs,
and bad input refused before anything runs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steer_eval.runs.backend_spec import BackendSpec
from steer_eval.errors import UserError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.runs.grid import build_grid
from steer_eval.scoring.prompts import Prompt
from steer_eval.runs.records import Request, read_rows
from steer_eval.runs.runner import RECORDS_FILE, dry_run, run

SIM = BackendSpec("simulate", "simulated")
PROMPTS = [Prompt(f"p{i}", f"Prompt number {i}?") for i in range(4)]


def _plan(**kwargs):
    return build_grid(PROMPTS, [1, 2], ["steering", "text"], ["composition"], **kwargs)


def test_simulated_records_are_deterministic_and_marked(tmp_path):
    first = run(_plan(), SIM, GenerationConfig(), tmp_path / "a" / RECORDS_FILE, progress=False).records()
    again = run(_plan(), SIM, GenerationConfig(), tmp_path / "b" / RECORDS_FILE, chunk_size=7,
                progress=False).records()
    assert [r.to_json() for r in first] == [r.to_json() for r in again]
    assert {r.backend for r in first} == {"simulate"}
    assert {r.scorer["scorer"] for r in first} == {"steer_eval.backends.simulate"}
    assert 0 < sum(r.followed for r in first) < len(first)


def test_a_one_shot_iterator_is_accepted_and_resume_counts_by_key(tmp_path):
    output = tmp_path / RECORDS_FILE
    plan = _plan()
    half = list(plan)[: len(plan) // 2]
    first = run(iter(half), SIM, GenerationConfig(), output, chunk_size=5, progress=False)
    assert (first.planned, first.skipped, first.evaluated) == (len(half), 0, len(half))
    second = run(plan, SIM, GenerationConfig(), output, chunk_size=5, progress=False)
    assert (second.planned, second.skipped, second.evaluated) == (len(plan), len(half), len(plan) - len(half))
    keys = [Request.from_json(row).key for row in read_rows(output)]
    assert len(keys) == len(set(keys)) == len(plan)


def test_the_same_request_twice_is_refused_before_running(tmp_path):
    request = Request("p0", "Prompt number 0?", ("german",), "text")
    with pytest.raises(UserError, match="appears twice"):
        run([request, request], SIM, GenerationConfig(), tmp_path / RECORDS_FILE, progress=False)
    with pytest.raises(UserError, match="names two different prompts"):
        run([request, Request("p0", "Other text", ("french",), "text")], SIM, GenerationConfig(), progress=False)
    assert not (tmp_path / RECORDS_FILE).exists()


def test_dry_run_counts_names_missing_tokens_and_estimates_after_a_run(tmp_path):
    spec = BackendSpec("hf", "smollm2-135m", str(tmp_path / "no-tokens"))
    summary = dry_run(_plan(), spec, tmp_path / RECORDS_FILE)
    assert summary["evaluations"] == len(_plan()) and summary["to_run"] == len(_plan())
    assert summary["tokens_missing"] == summary["tokens_needed"] and "<and>" in summary["tokens_needed"]
    assert summary["estimate"] is None

    output = tmp_path / "sim" / RECORDS_FILE
    run(list(_plan())[:20], SIM, GenerationConfig(), output, progress=False)
    summary = dry_run(_plan(), SIM, output)
    assert summary["already_recorded"] == 20 and summary["to_run"] == len(_plan()) - 20
    assert summary["tokens_missing"] == [] and summary["estimate"]["evaluations_per_second"] > 0


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "steer_eval.cli", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_grid_dry_run_loads_no_model(tmp_path):
    done = _cli("grid", "--backend", "hf", "--model", str(tmp_path / "no-such-model"), "--k", "1", "2",
                "--num-prompts", "3", "--output-dir", str(tmp_path / "out"), "--tokens-dir", str(tmp_path / "none"),
                "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "| 2 | steering | composition | 119 | 238 | 714 |" in done.stdout
    assert "missing: <and>, " in done.stdout and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--delay", "-1"], "delay must be >= 0"),
    (["--actors", "-1"], "must be 0 or more"),
    (["--chunk-size", "0"], "must be at least 1"),
    (["--num-prompts", "-1"], "must be at least 1"),
    (["--max-combinations", "-1"], "must be at least 1"),
    (["--k", "5"], "invalid choice"),
    (["--combination", "german+nope"], "nope"),
])
def test_bad_grid_arguments_are_one_line_and_exit_2(tmp_path, args, message):
    done = _cli("grid", "--backend", "simulate", "--k", "1", "2", "--num-prompts", "2",
                "--output-dir", str(tmp_path / "out"), *args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_more_actors_than_the_machine_can_place_is_refused(tmp_path):
    done = _cli("grid", "--backend", "simulate", "--k", "1", "--num-prompts", "2", "--actors", "64",
                "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--actors 64 needs 16 CPUs" in done.stderr and "Traceback" not in done.stderr


def test_summary_of_a_grid_equals_analyze_of_its_folder(tmp_path):
    out = tmp_path / "out"
    grid = _cli("grid", "--backend", "simulate", "--k", "1", "2", "--num-prompts", "3", "--output-dir", str(out),
                "--control-method", "steering", "text")
    assert grid.returncode == 0, grid.stderr
    analyzed = _cli("analyze", str(out), "--json")
    rows = json.loads(analyzed.stdout)
    assert {(r["control_method"], r["k"]) for r in rows} == {("steering", 1), ("steering", 2), ("text", 1), ("text", 2)}
    assert _cli("analyze", str(out)).stdout == grid.stdout


@pytest.mark.slow
def test_a_stale_cluster_record_is_never_attached_to(tmp_path):
    """Ray's temp folder names a cluster that is gone: --actors still starts a private instance and finishes."""
    import tempfile
    short = Path(tempfile.mkdtemp(prefix="se-", dir="/tmp"))  # Ray's socket paths must stay under 108 bytes
    stale = short / "ray"
    stale.mkdir(parents=True)
    (stale / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing listens there
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    done = _cli("grid", "--backend", "simulate", "--k", "1", "--num-prompts", "2", "--actors", "1",
                "--output-dir", str(tmp_path / "out"), env={**env, "RAY_TMPDIR": str(short), "TMPDIR": str(short)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((tmp_path / "out" / RECORDS_FILE).read_text().splitlines()) == 36


def test_the_reference_ordering_script_is_a_front_to_the_grid(tmp_path):
    output = tmp_path / "ordering"
    done = subprocess.run([sys.executable, "scripts/run_ordering_experiments.py", "--control_method", "text",
                           "--mode", "concatenation", "--token_combinations", "1", "2", "--num_samples", "2",
                           "--notes", "a note", "--output_dir", str(output), "--backend", "simulate",
                           "--max-combinations", "3"], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    rows = list(read_rows(output / RECORDS_FILE))
    assert len(rows) == (3 + 3 * 2) * 2  # k=1 and k=2 (both orders) subsamples, 2 prompts each
    assert {r["paraphrase_seed"] for r in rows} == {-1}  # no --sample_random_instruction: first instructions
    manifest = json.loads((output / "records.manifest.json").read_text())
    assert "--notes a note" in manifest["command"]
