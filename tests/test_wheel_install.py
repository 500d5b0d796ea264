"""The wheel, installed outside the repository, carries everything the card's commands need (the shipped steering
tokens, the task files, the lm-eval hook), and its hook leaves lm-eval's own behaviour alone.

The wheel goes into a fresh virtual environment that sees this environment's packages (a path file naming its
site-packages) but not the repository's editable steer-eval: that one is only reachable through its own path
files, which Python reads in site directories alone."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
# lm-eval's own arithmetic_1dc task as lm-eval defines it (its YAML, process_docs and metric), its data from a local
# file of the same schema instead of the hub; lm-eval's own `hf` model on the default model's folder.
LM_EVAL_PROBE = """
import json, pathlib, sys, traceback
import lm_eval
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
data, model = sys.argv[1:]
manager = TaskManager()  # one index: each parses lm-eval's ~12,000 task files
names = sorted(manager.all_tasks)
try:
    manager.load_task_or_group(["no_such_task_anywhere"])
    error = None
except Exception as exc:
    error = [type(exc).__module__, type(exc).__qualname__, str(exc),
             [(pathlib.Path(frame.filename).name, frame.name, frame.line)
              for frame in traceback.extract_tb(exc.__traceback__)]]
task = load_yaml(pathlib.Path(lm_eval.tasks.__file__).parent / "arithmetic" / "arithmetic_1dc.yaml", resolve_func=True)
task["dataset_kwargs"] = {"data_files": {"validation": data}}
output = simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", device="cpu", tasks=[task],
                         task_manager=manager, log_samples=True, random_seed=0, bootstrap_iters=0)
evaluation = {"results": output["results"], "samples": [[s["arguments"], s["resps"], s["acc"]]
                                                        for s in output["samples"]["arithmetic_1dc"]]}
print(json.dumps({"names": names, "error": error, "evaluation": evaluation,
                  "hook": any("steer_eval" in type(f).__module__ for f in sys.meta_path)}))
"""
ARITHMETIC = [{"context": f"Q: What is ({a} + {b}) * {c}?\n\nA:", "completion": f" {(a + b) * c}"}
              for a, b, c in [(1, 2, 3), (4, 1, 2), (3, 3, 1), (2, 5, 2), (9, 0, 1)]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from the files git would commit (tracked and new), never from a stale build/ folder."""
    source = tmp_path_factory.mktemp("source")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    [built] = out.glob("steer_eval-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    [site] = folder.glob("lib/python*/site-packages")
    (site / "this_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def test_the_installed_wheel_runs_the_card_commands_on_the_defaults(wheel, venv, tmp_path, default_model_dir):
    data = tmp_path / "arithmetic.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ARITHMETIC))
    probe = ("-c", LM_EVAL_PROBE, str(data), str(default_model_dir))
    before = _run(venv, *probe, cwd=tmp_path)
    assert before.returncode == 0, before.stderr[-2000:]
    assert _run(venv, "-c", "import steer_eval", cwd=tmp_path).returncode != 0  # the editable install is hidden
    installed = _run(venv, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    where = _run(venv, "-c", "import steer_eval, pathlib; print(pathlib.Path(steer_eval.__file__).resolve())",
                 cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv.resolve())), where.stdout

    # The hook changes nothing of lm-eval's own: its task names, the exception it raises with its traceback's
    # frames, and an evaluation of its own task (every sample's log-likelihoods) are the same.
    after = _run(venv, *probe, cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-2000:]
    old, new = json.loads(before.stdout.splitlines()[-1]), json.loads(after.stdout.splitlines()[-1])
    added = set(new["names"]) - set(old["names"])
    assert set(old["names"]) <= set(new["names"]) and added and all(
        name.startswith(("compose_", "steer_")) for name in added)
    assert new["error"] == old["error"] and new["hook"] and not old["hook"]
    assert len(old["evaluation"]["samples"]) == len(ARITHMETIC) and "acc,none" in old["evaluation"]["results"][
        "arithmetic_1dc"]
    assert new["evaluation"] == old["evaluation"]

    # the results page's script and style are package data of the wheel
    records = tmp_path / "records.jsonl"
    records.write_text("".join((ROOT / "results" / "grid_2actors" / "records.jsonl").open().readlines()[:30]))
    page = _run(venv, str(venv / "bin" / "steer-eval"), "report", str(records), "--html", str(tmp_path / "p.html"),
                "-q", cwd=tmp_path)
    assert page.returncode == 0, page.stderr[-2000:]
    assert "function el(tag" in (tmp_path / "p.html").read_text() and "font-family" in (tmp_path / "p.html").read_text()

    generated = _run(venv, str(venv / "bin" / "steer-eval"), "generate", "--steering", "german",
                     "--prompt", "Name three colours.", "--max-new-tokens", "24", cwd=tmp_path)
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr[-2000:]

    evaluated = _run(venv, "-m", "lm_eval", "--model", "steering_hf", "--tasks", "steer_german", "--limit", "2",
                     "--batch_size", "2", "--gen_kwargs", "max_gen_toks=48", "--output_path", str(tmp_path / "out"),
                     cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "steer_german" in evaluated.stdout and "accuracy" in evaluated.stdout
    [results] = (tmp_path / "out").rglob("results_*.json")
    metrics = json.loads(results.read_text())["results"]["steer_german"]
    assert 0 <= metrics["accuracy,none"] <= 1
