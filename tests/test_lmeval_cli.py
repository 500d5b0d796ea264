"""lm-eval integration end to end: registration, the released console scripts, task runs, logged samples."""
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(sys.executable).parent
HOOK_HINT = ("lm-eval did not find the steering models: the registration hook steer_eval_lm_eval.pth is missing "
             "from this environment's site-packages; reinstall (scripts/setup.sh, or pip install -e .)")


def console(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert "no model for this name found" not in result.stderr, HOOK_HINT
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


def assert_unit_interval(value):
    assert isinstance(value, float) and 0.0 <= value <= 1.0, value


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
    assert "[lm_eval.models]" in text and "steering_vllm = steer_eval.lmeval.models:SteeringVLLMLM" in text


def test_console_scripts_run_steering_and_stock_models_on_the_same_tasks(tiny_model_dir, tiny_tokens_dir, tmp_path):
    common = ["--include_path", "tasks", "--limit", "2", "--gen_kwargs", "max_gen_toks=8", "--log_samples"]
    steering_args = (f"pretrained={tiny_model_dir},tokens_dir={tiny_tokens_dir},control_method=hybrid,"
                     "mode=composition,batch_size=4")
    console("lm_eval", "--model", "steering_hf", "--model_args", steering_args, "--tasks", "compose_2,steer_german",
            "--output_path", str(tmp_path / "steering"), *common)
    results, samples = results_of(tmp_path / "steering")
    seen = results["results"]["compose_2_seen"]
    for metric in ("accuracy", "acc_language", "best_order_accuracy", "order_variance", "order_variance_max"):
        assert_unit_interval(seen[f"{metric},none"])
    assert (seen["control_method,none"], seen["mode,none"]) == ("hybrid", "composition")
    assert_unit_interval(results["groups"]["compose_2"]["order_variance,none"])
    assert_unit_interval(results["results"]["steer_german"]["accuracy,none"])
    first, second = samples["compose_2_seen"]
    assert first["doc"]["behaviors"] == second["doc"]["behaviors"][::-1]  # both orders of one combination
    assert [first["doc"]["order_index"], second["doc"]["order_index"]] == [0, 1]
    assert first["control_method"] == "hybrid" and first["mode"] == "composition"
    assert isinstance(first["filtered_resps"][0], str)
    assert {first["acc_language"], first["acc_length"]} <= {0.0, 1.0} and first["acc_format"] is None

    console("lm-eval", "run", "--model", "steering_hf", "--model_args",
            f"pretrained={tiny_model_dir},control_method=text", "--tasks", "steer_german",
            "--output_path", str(tmp_path / "text"), *common)
    results, samples = results_of(tmp_path / "text")
    assert results["results"]["steer_german"]["control_method,none"] == "text"

    # The text-instruction baseline: lm-eval's own hf class on the same task files.
    console("lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model_dir}", "--device", "cpu",
            "--apply_chat_template", "--tasks", "compose_2", "--output_path", str(tmp_path / "stock"), *common)
    results, samples = results_of(tmp_path / "stock")
    assert results["results"]["compose_2_unseen"]["mode,none"].startswith("stock model")
    assert_unit_interval(results["results"]["compose_2_unseen"]["accuracy,none"])
    prompt = samples["compose_2_unseen"][0]["arguments"]["gen_args_0"]["arg_0"]
    assert samples["compose_2_unseen"][0]["doc"]["text_input"] in prompt and "<|im_start|>user" in prompt


def _check_task_metrics(results: dict, tasks: list[str]):
    for task in tasks:
        metrics = results["results"][task]
        assert_unit_interval(metrics["accuracy,none"])
        for key, value in metrics.items():
            if key.startswith(("acc_", "order_", "best_")) and "_stderr" not in key and not math.isnan(value):
                assert_unit_interval(value)


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
                             task_manager=TaskManager(include_path=str(REPO / "tasks")))
    _check_task_metrics(output, ["compose_2_seen", "compose_2_unseen"])
    assert_unit_interval(output["groups"]["compose_2"]["order_variance,none"])


@pytest.mark.e2e
@pytest.mark.vllm
def test_default_model_steering_vllm_on_compose_tasks(vllm_default):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from steer_eval.lmeval.models import SteeringVLLMLM

    lm = SteeringVLLMLM(backend=vllm_default, control_method="text")  # the session's one engine
    output = simple_evaluate(model=lm, tasks=["compose_2", "compose_3"], limit=6, gen_kwargs={"max_gen_toks": 64},
                             task_manager=TaskManager(include_path=str(REPO / "tasks")))
    _check_task_metrics(output, ["compose_2_seen", "compose_2_unseen", "compose_3_seen", "compose_3_unseen"])
    for group in ("compose_2", "compose_3"):
        assert_unit_interval(output["groups"][group]["order_variance,none"])
    assert output["results"]["compose_3_seen"]["control_method,none"] == "text"
