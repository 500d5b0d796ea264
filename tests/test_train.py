"""The trainer's mechanics on the tiny random Llama: loss, what changes, <and>, resume, two-process data parallel."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_in_process import train

from steer_eval.errors import UserError
from steer_eval.training.examples import initial_vectors, make_examples, orthogonality_penalty, semantic_init
from steer_eval.training.inputs import read_training_data
from steer_eval.training.trainer_setup import TrainConfig, resumed_config

REPO = Path(__file__).resolve().parents[1]


TRAIN = REPO / "trainers" / "train.py"
CPU = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _argv(config: TrainConfig) -> list[str]:
    """The command line of `config` (the settings that differ from the defaults)."""
    argv = []
    for f in dataclasses.fields(TrainConfig):
        value, default = getattr(config, f.name), getattr(TrainConfig(), f.name)
        if value == default:
            continue
        if isinstance(value, bool):
            argv.append(f"--{'' if value else 'no-'}{f.name}")
        else:
            argv += [f"--{f.name}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return argv


def _train(config_or_argv) -> dict:
    """trainers/train.py's main(argv) as a user's command runs it, in this process; its summary.json. The script's own
    process: test_missing_data_is_a_clear_error, the kill -9 and torchrun tests."""
    argv = _argv(config_or_argv) if isinstance(config_or_argv, TrainConfig) else config_or_argv
    result = train(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    out_dir = argv[argv.index("--out_dir") + 1]
    return json.loads((Path(out_dir) / "summary.json").read_text()) if (Path(out_dir) / "summary.json").exists() else {}


def _refused(argv, in_process=True) -> str:
    """What trainers/train.py says when it refuses `argv`: exit status 2, one line on stderr (no traceback), nothing
    on stdout; `in_process=False` runs the script in its own process."""
    if in_process:
        result = train(*argv)
    else:
        result = subprocess.run([sys.executable, str(TRAIN), *argv], capture_output=True, text=True, env=CPU,
                                timeout=300)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and not result.stdout, result.stderr
    return result.stderr


def _vector(config, name):
    return load_file(Path(config.tokens_dir) / name / "vector.safetensors")["vector"]


def _write(path, records):
    path.write_text(json.dumps(records))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-data")
    singles = [{"prompt": f"Why is the sky blue? ({i})", "response": "Weil das Licht gestreut wird. " * (1 + i % 2),
                "behaviors": ["spanish"]} for i in range(6)]
    singles += [{"prompt": f"Tell me about cats {i}", "response": "Cats are small animals.",
                 "behaviors": ["words_10_50"]} for i in range(6)]
    pairs = [{"prompt": f"Describe a dog {i}", "response": "Un perro pequeño.",
              "behaviors": ["spanish", "words_10_50"][::1 if i % 2 else -1]} for i in range(4)]
    return {"singles": _write(folder / "singles.json", singles), "pairs": _write(folder / "pairs.json", pairs)}


def _config(tiny_model_dir, tmp_path, data_file, **overrides):
    options = dict(model=str(tiny_model_dir), data=[data_file], out_dir=str(tmp_path / "run"),
                   tokens_dir=str(tmp_path / "tokens"), batch_size=4, epochs=1, lr=1e-2, log_every=1,
                   checkpoint_every=100)
    return TrainConfig(**{**options, **overrides})


def _log(config):
    return [json.loads(line) for line in (Path(config.out_dir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def behaviour_run(tiny_model_dir, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("behaviour-run")
    config = _config(tiny_model_dir, tmp_path, data["singles"], epochs=2, temperature=1.0, run_validation=True,
                     val_data_path=[data["singles"]])
    return config, _train(config)


def test_training_lowers_the_validation_loss(behaviour_run):
    config, _ = behaviour_run
    val = [entry["val_loss"] for entry in _log(config) if "val_loss" in entry]
    assert val[-1] < 0.9 * val[0]


def test_tokens_are_saved_with_their_config(behaviour_run):
    from steer_eval.steering.tokens import TokenStore
    config, result = behaviour_run
    store = TokenStore(config.tokens_dir)
    assert store.names() == ["spanish", "words_10_50"]
    token = store.load("spanish")
    assert torch.equal(token.vector, _vector(config, "spanish"))
    assert token.training_config["lr"] == config.lr and token.training_config["summary"]["steps"] == 6
    assert result["summary"]["steps"] == 6


def test_semantic_init_is_the_mean_instruction_embedding(tiny_hf):
    from steer_eval.scoring.behaviors import get_behavior
    ids = tiny_hf.tokenizer.encode(get_behavior("german").instructions[0], add_special_tokens=False)
    expected = torch.stack([tiny_hf.embedding_weight[i] for i in ids]).mean(0)
    assert torch.allclose(semantic_init("german", tiny_hf.tokenizer, tiny_hf.embeddings), expected)


def test_and_stage_changes_only_and(behaviour_run, tiny_model_dir, data, tmp_path):
    behaviour_config, _ = behaviour_run
    store_dir = tmp_path / "tokens"
    shutil.copytree(behaviour_config.tokens_dir, store_dir)
    before = {p: p.read_bytes() for p in store_dir.rglob("*") if p.is_file()}
    config = _config(tiny_model_dir, tmp_path, data["pairs"], stage="and", tokens_dir=str(store_dir), batch_size=2)
    _train(config)
    assert {p: p.read_bytes() for p in before} == before  # behaviour tokens on disk untouched
    assert _vector(config, "and").abs().sum() > 0
    assert (store_dir / "and" / "metadata.json").is_file()
    orth = [entry["orth"] for entry in _log(config) if "orth" in entry]
    assert orth[0] == 0 and orth[-1] > 0  # zero at the zero vector, live once <and> has moved


def test_and_starts_at_zero(tiny_hf, data, behaviour_run):
    from steer_eval.steering.tokens import TokenStore
    config, _ = behaviour_run
    records, _ = read_training_data([data["pairs"]])
    examples = make_examples(records, tiny_hf.tokenizer, "and", 32)
    params, frozen = initial_vectors("and", examples, tiny_hf.tokenizer, tiny_hf.embeddings,
                                             TokenStore(config.tokens_dir), None)
    assert list(params) == ["<and>"] and torch.count_nonzero(params["<and>"]) == 0
    assert set(frozen) == {"spanish", "words_10_50"}
    penalty = orthogonality_penalty(params["<and>"], frozen.values())
    penalty.backward()
    assert penalty.item() == 0 and torch.count_nonzero(params["<and>"].grad) == 0


def test_orthogonality_penalty_matches_hand_computation():
    a, b, c = [1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 3.0, 2.0], [-2.0, 0.0, 1.0, 1.0]

    def cos(x, y):
        dot = sum(p * q for p, q in zip(x, y))
        return dot / (math.sqrt(sum(p * p for p in x)) * math.sqrt(sum(q * q for q in y)))

    expected = cos(a, b) ** 2 + cos(a, c) ** 2
    got = orthogonality_penalty(torch.tensor(a, dtype=torch.float64),
                                [torch.tensor(b, dtype=torch.float64), torch.tensor(c, dtype=torch.float64)])
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_bfloat16_base_trains_and_saves_float32_vectors(tiny_model_dir, tiny_hf, data, tmp_path):
    config = _config(tiny_model_dir, tmp_path, data["singles"], dtype="bfloat16", group_size=2)
    summary = _train(config)["summary"]
    assert summary["dtype"] == "bfloat16" and math.isfinite(summary["final_loss"])
    initial = semantic_init("spanish", tiny_hf.tokenizer, tiny_hf.embeddings)
    vector = _vector(config, "spanish")
    assert vector.dtype == torch.float32 and not torch.equal(vector, initial)


def test_resume_reproduces_the_uninterrupted_run(tiny_model_dir, data, tmp_path):
    whole = _config(tiny_model_dir, tmp_path / "whole", data["singles"], epochs=2)
    _train(whole)
    whole_vector = _vector(whole, "spanish")

    parted = _config(tiny_model_dir, tmp_path / "parted", data["singles"], epochs=2, stop_after=4)
    _train(parted)
    assert not (Path(parted.tokens_dir) / "spanish").exists()  # stopped early: no token yet
    resumed, checkpoint = resumed_config(["--out_dir", parted.out_dir, "--resume"])
    assert checkpoint["step"] == 4 and resumed.lr == parted.lr
    moved, _ = resumed_config(["--out_dir", parted.out_dir, "--resume", "--cuda_graphs", "off"])
    assert moved.cuda_graphs == "off" and moved.lr == parted.lr  # what to run on comes from the command line
    _train(["--out_dir", parted.out_dir, "--resume"])
    resumed_vector = _vector(parted, "spanish")
    assert torch.equal(resumed_vector, whole_vector)
    losses = lambda config: [e["loss"] for e in _log(config) if "loss" in e]  # noqa: E731
    assert losses(parted) == losses(whole)


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_reproduces_the_uninterrupted_run(tiny_model_dir, data, tmp_path):
    """A process killed mid-run (after a checkpoint, before the next) and resumed gives the same tokens and log."""
    env = CPU
    base = [sys.executable, str(REPO / "trainers" / "train.py"), "--model", str(tiny_model_dir), "--data",
            data["singles"], "--batch_size", "2", "--epochs", "4", "--lr", "1e-2", "--log_every", "1",
            "--checkpoint_every", "5", "--device", "cpu"]
    run = lambda name: base + ["--out_dir", str(tmp_path / name), "--tokens_dir", str(tmp_path / f"{name}_tokens")]  # noqa: E731
    subprocess.run(run("whole"), check=True, capture_output=True, env=env, timeout=300)
    killed = subprocess.Popen(run("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    log = tmp_path / "killed" / "log.jsonl"
    deadline = time.monotonic() + 240
    while killed.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= 7:  # past the checkpoint at step 5
            break
        time.sleep(0.02)
    killed.kill()  # SIGKILL: no handler runs
    killed.wait()
    assert killed.returncode == -9, "the run ended before it could be killed"
    assert not (tmp_path / "killed_tokens" / "spanish").exists()
    subprocess.run(base[:2] + ["--out_dir", str(tmp_path / "killed"), "--resume", "--device", "cpu"], check=True,
                   capture_output=True, env=env, timeout=300)
    for name in ("spanish", "words_10_50"):
        vectors = [load_file(tmp_path / f"{run_name}_tokens" / name / "vector.safetensors")
                   for run_name in ("whole", "killed")]
        assert all(torch.equal(vectors[0][k], vectors[1][k]) for k in vectors[0])
    timing = ("s_per_step", "tokens_per_s")
    lines = [[{k: v for k, v in json.loads(line).items() if k not in timing}
              for line in (tmp_path / run_name / "log.jsonl").read_text().splitlines()] for run_name in ("whole", "killed")]
    assert lines[0] == lines[1] and len(lines[0]) == 24  # 12 records / 2 a step x 4 epochs, each logged once


class _RunsCode:
    """A pickle that, when unpickled with full pickle semantics, writes a file (stands in for any command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def _manifest(out_dir, **config):
    """run.json of a run of these settings that has not yet taken a step (as the trainer writes it)."""
    from steer_eval.training.run_folder import RunFolder, TrainingIdentity
    settings = {**dataclasses.asdict(TrainConfig(model="m", data=["d.json"])), **config}
    RunFolder(out_dir, "train.py").start(TrainingIdentity.of("train.py", settings, [], "fingerprint"), restart=False)


def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    out_dir = tmp_path / "run"
    _manifest(out_dir)
    torch.save({"config": {}, "payload": _RunsCode(marker)}, out_dir / "ckpt.pt")
    error = _refused(["--out_dir", str(out_dir), "--resume"])
    assert "is not a checkpoint this trainer wrote" in error and "--restart" in error
    assert not marker.exists()
    torch.load(out_dir / "ckpt.pt", weights_only=False)  # the same file under full unpickling: the code runs
    assert marker.read_text() == "code ran"


def test_torchrun_two_cpu_processes_agree(tiny_model_dir, data, tmp_path):
    env = CPU
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(REPO / "trainers" / "train.py"), "--model", str(tiny_model_dir), "--data", data["singles"],
               "--out_dir", str(tmp_path / "run"), "--tokens_dir", str(tmp_path / "tokens"), "--batch_size", "4",
               "--epochs", "1", "--lr", "1e-2", "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["summary"]
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    assert (tmp_path / "tokens" / "spanish" / "vector.safetensors").is_file()


def test_resume_refuses_a_run_of_an_older_trainer(tmp_path):
    out_dir = tmp_path / "run"
    _manifest(out_dir, autocast="auto")
    with pytest.raises(UserError, match=r"another version of this trainer \(settings autocast\)"):
        resumed_config(["--out_dir", str(out_dir), "--resume"])


@pytest.mark.parametrize("flags", [["--dtype", "float16"], ["--group_size", "-2"], ["--cuda_graphs", "yes"],
                                   ["--cuda_graphs", "on", "--gradient_checkpointing"]])
def test_bad_precision_or_group_size_is_one_clear_line(flags):
    assert flags[0] in _refused(["--data", "d.json", *flags])


@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("{not json", "not valid JSON"),
                                              ('[1, 2]', "every record needs"), ('{"a": 1}', "every record needs")])
def test_bad_data_files_are_one_clear_line(tmp_path, content, message):
    path = tmp_path / "data.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as error_info:
        read_training_data([path])
    error = str(error_info.value)
    assert message in error and str(path) in error and len(error.splitlines()) == 1


def test_missing_data_is_a_clear_error():
    error = _refused(["--stage", "behaviour"], in_process=False)
    assert error == "steer-eval: error: --data is required: JSON files from trainers/build_data.py\n"


def test_cuda_graphs_on_a_cpu_is_one_clear_line():
    error = _refused(["--data", "d.json", "--cuda_graphs", "on", "--device", "cpu"])
    assert "CUDA graphs need a CUDA device" in error and "--cuda_graphs off" in error
