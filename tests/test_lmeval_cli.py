"""lm-eval integration end to end: registration, the released console scripts, task runs, logged samples."""
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("lm_eval_index_cache")  # lm-eval in this process: its task files parsed once
REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
HOOK_HINT = ("lm-eval did not find the steering models: the registration hook steer_eval_lm_eval.pth is missing "
             "from this environment's site-packages; reinstall (scripts/setup.sh, or pip install -e .)")


def console(script: str, *args: str, cwd: Path = REPO, ok: bool = True, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    result = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=900, cwd=cwd,
                            env=None if env is None else {**os.environ, **env})
    assert "no model for this name found" not in result.stderr, HOOK_HINT
    if ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def results_of(output: Path) -> tuple[dict, dict[str, list[dict]]]:
    """(aggregated results, samples by task) from an lm-eval --output_path folder."""
    [results_file] = output.glob("**/results_*.json")
    samples = {}
    for path in output.glob("**/samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(results_file.read_text()), samples


def tiny_token_dir_of(model_args: str) -> str:
    return dict(item.split("=", 1) for item in model_args.split(","))["tokens_dir"]


def assert_unit_interval(value):
    assert isinstance(value, float) and 0.0 <= value <= 1.0, value


def same(got: float, expected: float | None) -> bool:
    """lm-eval's value equals steer_eval's (None there is NaN here: no complete order set)."""
    return math.isnan(got) if expected is None else got == pytest.approx(expected, abs=1e-12)


def assert_metrics_match_analysis(results: dict, samples: dict[str, list[dict]], tasks: list[str]) -> None:
    """Each task's metrics equal what steer_eval computes from the same logged samples: every response verified
    again (scoring.verdict) and aggregated by steer_eval.report.analysis, independently of lm-eval's aggregation."""
    from steer_eval.report.analysis import behavior_accuracy, summarize
    from steer_eval.scoring.behaviors import CATEGORIES, get_behavior
    from steer_eval.scoring.verdict import verify
    grouped: dict[str, list[dict]] = {}
    for task in tasks:
        records = []
        for sample in samples[task]:
            verdict = verify(sample["doc"]["behaviors"], sample["filtered_resps"][0])
            records.append({"behaviors": sample["doc"]["behaviors"], "prompt_id": sample["doc"]["prompt_id"],
                            "followed": verdict.followed, "per_behavior": verdict.per_behavior})
            assert sample["accuracy"] == float(verdict.followed)  # the logged per-sample score is the verdict
        grouped[task] = records
        metrics, summary = results["results"][task], summarize(records)["all"]
        assert metrics["accuracy,none"] == pytest.approx(behavior_accuracy(records)["accuracy"])
        for name in ("best_order_accuracy", "order_variance", "order_variance_max"):
            assert same(metrics[f"{name},none"], summary[name]), (task, name, metrics, summary)
        for category in CATEGORIES:
            verdicts = [ok for r in records for b, ok in r["per_behavior"].items()
                        if get_behavior(b).category == category]
            assert same(metrics[f"acc_{category},none"], sum(verdicts) / len(verdicts) if verdicts else None)
        for key, value in metrics.items():
            if key.startswith(("accuracy", "acc_", "order_", "best_")) and "_stderr" not in key \
                    and not math.isnan(value):
                assert_unit_interval(value)
    return grouped


def assert_groups_match_analysis(results: dict, grouped: dict[str, list[dict]], groups: list[str]) -> None:
    """A group's accuracy is the share over all its samples; its order variance the size-weighted mean of its
    subtasks' (lm-eval's one group aggregation), each recomputed from the samples."""
    from steer_eval.report.analysis import behavior_accuracy, summarize
    for group in groups:
        parts = {task: records for task, records in grouped.items() if task.startswith(group + "_")}
        everything = [r for records in parts.values() for r in records]
        assert results["groups"][group]["accuracy,none"] == pytest.approx(behavior_accuracy(everything)["accuracy"])
        variance = sum(len(records) * summarize(records)["all"]["order_variance"] for records in parts.values())
        assert results["groups"][group]["order_variance,none"] == pytest.approx(variance / len(everything))
        assert_unit_interval(results["groups"][group]["order_variance,none"])


def test_registration_hook_is_lazy_and_keeps_the_stock_models():
    code = ("import sys\n"
            "from steer_eval.lmeval.registration import install_import_hook\n"
            "install_import_hook()\n"
            "assert 'torch' not in sys.modules and 'lm_eval' not in sys.modules\n"
            "from lm_eval.api.registry import get_model\n"
            "assert 'steer_eval.lmeval.models' not in sys.modules  # placeholders until asked for\n"
            "print(get_model('steering_hf').__name__, get_model('steering_vllm').__name__, get_model('hf').__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SteeringHFLM", "SteeringVLLMLM", "HFLM"]


def test_wheel_ships_the_registration_hook_and_entry_points(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=600)
    [wheel] = tmp_path.glob("steer_eval-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "install_import_hook()" in archive.read("steer_eval_lm_eval.pth").decode()
        [entry_points] = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        text = archive.read(entry_points).decode()
        names = set(archive.namelist())
    assert "[lm_eval.models]" in text and "steering_vllm = steer_eval.lmeval.models:SteeringVLLMLM" in text
    assert "[lm_eval.tasks]" in text and "steer_eval = steer_eval.tasks" in text
    assert {"steer_eval/tasks/compose_2.yaml", "steer_eval/tasks/_base_template_yaml",
            "steer_eval/tasks/utils.py", "steer_eval/tasks/steer_german.yaml"} <= names


def test_entry_points_resolve_to_the_classes_and_task_folder_newer_lm_eval_reads():
    from importlib.metadata import entry_points

    from lm_eval.tasks import TaskManager

    from steer_eval.lmeval.models import SteeringHFLM, SteeringVLLMLM
    models = {ep.name: ep.load() for ep in entry_points(group="lm_eval.models") if ep.value.startswith("steer_eval")}
    assert models == {"steering_hf": SteeringHFLM, "steering_vllm": SteeringVLLMLM}
    [tasks] = [ep for ep in entry_points(group="lm_eval.tasks") if ep.name == "steer_eval"]
    folder = Path(tasks.load().__file__).parent
    # What a plugin-reading lm-eval does with it: index the folder after its own tasks (the hook adds nothing twice).
    manager = TaskManager(include_path=str(folder))
    assert Path(manager.task_index["compose_2"].yaml_path).parent == folder
    assert {"compose_3_unseen", "steer_json", "steer_behaviors"} <= set(manager.all_tasks)


def test_tasks_are_found_without_include_path_and_a_users_copy_wins(tmp_path):
    import shutil

    from lm_eval.tasks import TaskManager

    from steer_eval.lmeval.plugin import TASKS_DIR
    assert Path(TaskManager().task_index["steer_german"].yaml_path).parent == TASKS_DIR
    copy = tmp_path / "my_tasks"
    shutil.copytree(TASKS_DIR, copy)
    manager = TaskManager(include_path=str(copy))
    assert Path(manager.task_index["steer_german"].yaml_path).parent == copy
    with pytest.raises(ValueError, match="unknown task 'compose_22'; did you mean compose_2"):
        manager.match_tasks(["compose_22"])
    assert manager.match_tasks(["hellaswagg"]) == []  # lm-eval's own names keep lm-eval's own error


ERROR_CASES = {
    "misspelt task": (["--model", "steering_hf", "--tasks", "steer_germn"], "did you mean steer_german"),
    "unknown model_args key": (["--model", "steering_hf", "--model_args", "batch_sise=2", "--tasks", "steer_german"],
                               "did you mean batch_size"),
    "unknown engine argument": (["--model", "steering_vllm", "--model_args", "enforce_eagre=True",
                                 "--tasks", "steer_german"], "did you mean enforce_eager"),
    "non-integer number": (["--model", "steering_hf", "--model_args", "max_gen_toks=abc", "--tasks", "steer_german"],
                           "max_gen_toks=abc is not an integer"),
    "control_method": (["--model", "steering_hf", "--model_args", "control_method=foo", "--tasks", "steer_german"],
                       "choose one of steering, text, hybrid"),
    "mode": (["--model", "steering_vllm", "--model_args", "mode=foo", "--tasks", "steer_german"],
             "choose one of composition, concatenation, native_and"),
    "missing folder": (["--model", "steering_hf", "--model_args", "pretrained=./no_such_model", "--tasks", "compose_2"],
                       "does not exist; pass an existing folder"),
    "unknown hub id": (["--model", "steering_vllm", "--model_args", "pretrained=no_such_model", "--tasks", "compose_2"],
                       "pass pretrained=<folder>"),
}


def lm_eval_fails(lm_eval_main, cwd: Path, *args: str) -> str:
    """Run `lm_eval <args>` in this process, expect it to fail; the stderr it leaves (the excepthook's too)."""
    with pytest.raises(Exception) as caught:  # every case here fails; a run that passes fails the test
        lm_eval_main(cwd, *args)
    return caught.value.captured.err


# This machine has no network: the hub's client retries a name it cannot resolve for ~26 s before it fails. In offline
# mode it fails at once, through the same error path.
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_are_one_line_without_traceback(case, lm_eval_main, tmp_path, monkeypatch):
    args, fix = ERROR_CASES[case]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    stderr = lm_eval_fails(lm_eval_main, tmp_path, *args, "--limit", "1")
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if line.startswith("steer-eval: error:")]
    assert fix in line


def test_a_user_error_ends_the_console_script_with_one_line(tmp_path):
    """What only a real process shows: the installed script's exit status and its whole stderr."""
    args, fix = ERROR_CASES["unknown hub id"]
    result = console("lm_eval", *args, "--limit", "1", cwd=tmp_path, ok=False, env=OFFLINE)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("steer-eval: error:")]
    assert fix in line


def test_missing_tokens_are_one_line_naming_them(tiny_model_dir, lm_eval_main, tmp_path):
    stderr = lm_eval_fails(lm_eval_main, tmp_path, "--model", "steering_hf", "--model_args",
                           f"pretrained={tiny_model_dir},tokens_dir={tmp_path}", "--tasks", "compose_2", "--limit", "1")
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "steer-eval: error: these requests need steering tokens <and>, german, spanish, words_10_50," in stderr


def test_console_scripts_run_steering_and_stock_models_on_the_same_tasks(tiny_model_dir, tiny_tokens_dir,
                                                                       lm_eval_main, tmp_path):
    """Both spellings of the command (`lm_eval ...`, `lm-eval run ...`), through lm-eval's CLI entry point in this
    process; the installed scripts themselves run in subprocesses: the user error below, and test_wheel_install's."""
    common = ["--limit", "2", "--gen_kwargs", "max_gen_toks=8", "--log_samples"]
    steering_args = (f"pretrained={tiny_model_dir},tokens_dir={tiny_tokens_dir},control_method=hybrid,"
                     "mode=composition,batch_size=4")
    lm_eval_main(tmp_path, "--model", "steering_hf", "--model_args", steering_args, "--tasks", "compose_2,steer_german",
                 "--output_path", tmp_path / "steering", *common)
    results, samples = results_of(tmp_path / "steering")
    seen = results["results"]["compose_2_seen"]
    for metric in ("accuracy", "acc_language", "best_order_accuracy", "order_variance", "order_variance_max",
                   "repetition"):
        assert_unit_interval(seen[f"{metric},none"])
    assert (seen["control_method,none"], seen["mode,none"]) == ("hybrid", "composition")
    assert_unit_interval(results["groups"]["compose_2"]["order_variance,none"])
    assert_unit_interval(results["groups"]["compose_2"]["repetition,none"])
    assert_unit_interval(results["results"]["steer_german"]["accuracy,none"])
    first, second = samples["compose_2_seen"]
    assert first["doc"]["behaviors"] == second["doc"]["behaviors"][::-1]  # both orders of one combination
    assert [first["doc"]["order_index"], second["doc"]["order_index"]] == [0, 1]
    assert first["control_method"] == "hybrid" and first["mode"] == "composition"
    from steer_eval.scoring.verdict import SCORER_VERSION
    from steer_eval.steering.tokens import TokenStore
    assert first["scorer"]["version"] == SCORER_VERSION
    assert [v["id"] for v in first["scorer"]["verifiers"]] == first["doc"]["behaviors"]
    store = TokenStore(tiny_token_dir_of(steering_args))
    assert first["steering_tokens"] == {name: store.load(name).fingerprint
                                        for name in [*first["doc"]["behaviors"], "<and>"]}
    assert results["config"]["steer_eval"]["control_method"] == "hybrid"
    assert seen["scorer,none"] == f"steer_eval.scoring.verify v{SCORER_VERSION}"
    assert isinstance(first["filtered_resps"][0], str)
    assert {first["acc_language"], first["acc_length"]} <= {0.0, 1.0} and first["acc_format"] is None

    lm_eval_main(tmp_path, "run", "--model", "steering_hf", "--model_args",
                 f"pretrained={tiny_model_dir},control_method=text", "--tasks", "steer_german",
                 "--output_path", tmp_path / "text", *common)
    results, samples = results_of(tmp_path / "text")
    assert results["results"]["steer_german"]["control_method,none"] == "text"

    # The text-instruction baseline: lm-eval's own hf class on the same task files.
    lm_eval_main(tmp_path, "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}", "--device", "cpu",
                 "--apply_chat_template", "--tasks", "compose_2", "--output_path", tmp_path / "stock", *common)
    results, samples = results_of(tmp_path / "stock")
    assert results["results"]["compose_2_unseen"]["mode,none"].startswith("stock model")
    assert samples["compose_2_unseen"][0]["steering_tokens"] == {}
    assert_unit_interval(results["results"]["compose_2_unseen"]["accuracy,none"])
    prompt = samples["compose_2_unseen"][0]["arguments"]["gen_args_0"]["arg_0"]
    assert samples["compose_2_unseen"][0]["doc"]["text_input"] in prompt and "<|im_start|>user" in prompt


@pytest.mark.e2e
def test_default_model_steering_hf_on_compose_tasks(default_hf, write_random_tokens, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from steer_eval.backends.hf import HFBackend
    from steer_eval.lmeval.models import SteeringHFLM

    # The session's loaded model, with random tokens of its own (the shared backend's tokens stay untouched).
    write_random_tokens(tmp_path, default_hf.identity.model_id, default_hf.embedding_weight)
    backend = HFBackend("smollm2-135m", tokens_dir=tmp_path, model=default_hf.model, tokenizer=default_hf.tokenizer)
    lm = SteeringHFLM(backend=backend, control_method="steering", mode="composition")
    output = simple_evaluate(model=lm, tasks=["compose_2"], limit=2, gen_kwargs={"max_gen_toks": 32},
                             task_manager=TaskManager(), log_samples=True)
    grouped = assert_metrics_match_analysis(output, output["samples"], ["compose_2_seen", "compose_2_unseen"])
    assert_groups_match_analysis(output, grouped, ["compose_2"])


@pytest.mark.e2e
@pytest.mark.vllm
def test_default_model_steering_vllm_on_compose_tasks(vllm_default):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from steer_eval.lmeval.models import SteeringVLLMLM

    lm = SteeringVLLMLM(backend=vllm_default, control_method="text")  # the session's one engine
    output = simple_evaluate(model=lm, tasks=["compose_2", "compose_3"], limit=6, gen_kwargs={"max_gen_toks": 16},
                             task_manager=TaskManager(), log_samples=True)
    grouped = assert_metrics_match_analysis(output, output["samples"], ["compose_2_seen", "compose_2_unseen",
                                                                        "compose_3_seen", "compose_3_unseen"])
    assert_groups_match_analysis(output, grouped, ["compose_2", "compose_3"])
    assert output["results"]["compose_3_seen"]["control_method,none"] == "text"
