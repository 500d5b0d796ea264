"""trainers/train.py's inputs and out_dir, as a hostile user meets them: every bad file is one line (exit 2) before any
model loads; an out_dir is one run (run.json), never silently replaced or mixed with another; the log is append-only."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from trainer_in_process import train

from steer_eval.errors import UserError
from steer_eval.training.trainer_setup import prepare_run, resumed_config

REPO = Path(__file__).resolve().parents[1]
CPU = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

TIMING = ("s_per_step", "tokens_per_s")


def _records(behaviour="spanish", n=6, prompt="Why is the sky blue?"):
    return [{"prompt": f"{prompt} ({i})", "response": "Weil das Licht gestreut wird. " * (1 + i % 2),
             "behaviors": [behaviour]} for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("out-dir-data")
    files = {"singles": _records() + _records("words_10_50", prompt="Tell me about cats"),
             "other": _records() + _records("words_10_50", prompt="Tell me about dogs"),
             "pairs": [{"prompt": f"Describe a dog {i}", "response": "Un perro.",
                        "behaviors": ["spanish", "words_10_50"]} for i in range(4)]}
    for name, rows in files.items():
        (folder / f"{name}.json").write_text(json.dumps(rows))
    return {name: str(folder / f"{name}.json") for name in files}


@pytest.fixture
def args(tiny_model_dir, data, tmp_path):
    """args(*extra, out=..., data=...): a 3-step CPU run of the tiny model into tmp_path/<out>."""
    def make(*extra, out="run", data_file=data["singles"]):
        return ["--model", str(tiny_model_dir), "--data", data_file, "--out_dir", str(tmp_path / out),
                "--tokens_dir", str(tmp_path / f"{out}_tokens"), "--batch_size", "4", "--epochs", "1", "--lr", "1e-2",
                "--log_every", "1", "--checkpoint_every", "100", "--device", "cpu", *extra]
    return make


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["summary"]


def _log(folder: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (folder / "log.jsonl").read_text().splitlines()]


def _refused(argv) -> str:
    """The one line a refused run says: everything trainers/train.py checks before its model loads
    (`prepare_run` loads none; tests/test_train.py shows the script's exit status 2 and one line)."""
    with pytest.raises(UserError) as refusal:
        prepare_run(*resumed_config(argv))
    err = str(refusal.value)
    assert "\n" not in err and len(err) < 2000, err
    return err


def _main(argv) -> subprocess.CompletedProcess:
    """trainers/train.py's main(argv) as a user's command runs it, in this process (the script's own process, its exit
    status 2 and kill -9 between checkpoints: tests/test_train.py)."""
    result = train(*argv)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _killed_before_first_checkpoint(argv):
    """What kill -9 leaves before the run's first checkpoint: run.json (unfinished), a log of its first step, no
    ckpt.pt."""
    _main([*argv, "--stop_after", "1"])
    out_dir = Path(argv[argv.index("--out_dir") + 1])
    (out_dir / "ckpt.pt").unlink()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, data, tmp_path_factory):
    """The uninterrupted 3-step run's log, and one at lr 2e-2."""
    logs = {}
    for lr in ("1e-2", "2e-2"):
        folder = tmp_path_factory.mktemp(f"reference-{lr}")
        _main(["--model", str(tiny_model_dir), "--data", data["singles"], "--out_dir", str(folder / "run"),
                      "--tokens_dir", str(folder / "tokens"), "--batch_size", "4", "--epochs", "1", "--lr", lr,
                      "--log_every", "1", "--checkpoint_every", "100", "--device", "cpu"])
        logs[lr] = _log(folder / "run")
    return logs


@pytest.fixture(scope="module")
def stopped(tiny_model_dir, data, tmp_path_factory):
    """A run stopped (with its checkpoint) after 1 of 3 steps: run.json, ckpt.pt, log.jsonl."""
    folder = tmp_path_factory.mktemp("stopped") / "run"
    _main(["--model", str(tiny_model_dir), "--data", data["singles"], "--out_dir", str(folder),
                  "--tokens_dir", str(folder.parent / "tokens"), "--batch_size", "4", "--epochs", "1", "--lr", "1e-2",
                  "--log_every", "1", "--checkpoint_every", "100", "--device", "cpu", "--stop_after", "1"])
    return folder


# ----------------------------------------------------------------------------- hostile files

DATA_CASES = {
    "random bytes": (bytes(range(256)) * 8, "not UTF-8"),
    "empty": (b"", "is empty"),
    "directory": (None, "is a directory"),
    "object": (b"{}", "not a list of records"),
    "numbers": (b"[1, 2]", "not a record"),
    "field types": (b'[{"prompt": 1, "response": [], "behaviors": "german"}]', "prompt is a number, not a string"),
    "behaviors a string": (b'[{"prompt": "p", "response": "r", "behaviors": "german"}]', "not a non-empty list"),
    "unknown behaviour": (b'[{"prompt": "p", "response": "r", "behaviors": ["klingon"]}]', "unknown behaviour"),
    "huge line": (b'{"prompt": "p", "response": "r", "behaviors": ["' + b"x" * 3_000_000 + b'"]}',
                  "unknown behaviour"),
    "deep nesting": (b"[" * 200_000, "nests JSON too deeply"),
    "long number": (b"[" + b"1" * 10_000 + b"]", "not valid JSON"),
    "latin-1": ('[{"prompt": "Grüße", "response": "r", "behaviors": ["german"]}]'.encode("latin-1"), "not UTF-8"),
    "pair in a behaviour file": (b'[{"prompt": "p", "response": "r", "behaviors": ["spanish", "words_10_50"]}]',
                                 "stage behaviour got a record"),
}


def _put(path: Path, content):
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", DATA_CASES)
@pytest.mark.parametrize("role", ["data", "val_data"])
def test_a_hostile_data_file_is_one_line_and_loads_no_model(case, role, args, data, tmp_path):
    content, message = DATA_CASES[case]
    path = _put(tmp_path / ("bad.jsonl" if case == "huge line" else "bad.json"), content)
    argv = (args(data_file=str(path)) if role == "data"
            else args("--run_validation", "--val_data_path", str(path)))
    err = _refused(argv)
    assert str(path) in err and message in err, err
    assert not (tmp_path / "run").exists()  # nothing written either


def test_a_data_file_that_does_not_exist_is_not_called_a_directory(args, tmp_path):
    err = _refused(args(data_file=str(tmp_path / "missing.json")))
    assert "missing.json does not exist" in err


def test_unknown_behaviour_asked_for_is_one_line(args):
    assert "unknown behaviour 'klingon'" in _refused(args("--behaviors", "klingon"))


def _rewrite_checkpoint(folder: Path, change):
    checkpoint = torch.load(folder / "ckpt.pt", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, folder / "ckpt.pt")


CHECKPOINT_CASES = {
    "wrong shape {'step': 3}": (lambda f: torch.save({"step": 3}, f / "ckpt.pt"), "(no run)"),
    "random bytes": (lambda f: (f / "ckpt.pt").write_bytes(bytes(range(256)) * 8), "not a checkpoint this trainer"),
    "empty": (lambda f: (f / "ckpt.pt").write_bytes(b""), "is empty"),
    "directory": (lambda f: ((f / "ckpt.pt").unlink(), (f / "ckpt.pt").mkdir()), "is a directory"),
    "a list": (lambda f: torch.save([1, 2], f / "ckpt.pt"), "holds a list, not a dict"),
    "a key missing": (lambda f: _rewrite_checkpoint(f, lambda c: c.pop("optimizer")), "(no optimizer)"),
    "a wrong type": (lambda f: _rewrite_checkpoint(f, lambda c: c.update(step="3")), "step is a str"),
    "vectors of another shape": (lambda f: _rewrite_checkpoint(
        f, lambda c: c["vectors"].update(spanish=torch.zeros(2, 64))), "not 1-D float tensors"),
    "vectors of other names": (lambda f: _rewrite_checkpoint(
        f, lambda c: c["vectors"].update(german=c["vectors"].pop("spanish"))), "its vectors are"),
    "a step past the end": (lambda f: _rewrite_checkpoint(f, lambda c: c.update(step=99)), "step 99 is outside"),
    "other settings": (lambda f: _rewrite_checkpoint(f, lambda c: c["config"].update(lr=5.0)), "other settings"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_hostile_checkpoint_is_one_line_and_loads_no_model(case, stopped, tmp_path):
    folder = Path(shutil.copytree(stopped, tmp_path / "run"))
    damage, message = CHECKPOINT_CASES[case]
    damage(folder)
    err = _refused(["--out_dir", str(folder), "--resume"])
    assert str(folder / "ckpt.pt") in err and message in err, err


def _settings(**changes):
    return lambda m: json.dumps({**m, "config": {**m["config"], **changes}}).encode()


MANIFEST_CASES = {  # (content from the good manifest, message, also refused so for a fresh run into the folder)
    "random bytes": (lambda m: bytes(range(256)) * 8, "not UTF-8", True),
    "empty": (lambda m: b"", "is empty", True),
    "directory": (None, "is a directory", True),
    "not JSON": (lambda m: b"{run", "not valid JSON", True),
    "an object missing its fields": (lambda m: b"{}", "not a run manifest this trainer wrote (manifest_version is",
                                     True),
    "a list": (lambda m: b"[1, 2]", "it is a JSON list", True),
    "data not [path, sha256]": (lambda m: json.dumps({**m, "data": [1]}).encode(), "data is not a list", True),
    # --resume takes the settings from run.json: each is checked as a command-line setting would be
    "a setting of the wrong type": (_settings(lr="fast"), "setting lr is 'fast', not a float", False),
    "a list of numbers as data": (_settings(data=[1]), "not a list of strings", False),
    "an unknown stage": (_settings(stage="x"), "--stage must be", False),
    "an unknown setting": (_settings(autocast="auto"), "another version of this trainer (settings autocast)", False),
}


@pytest.mark.parametrize("case, resume", [(case, True) for case in MANIFEST_CASES]
                         + [(case, False) for case, (_, _, fresh_too) in MANIFEST_CASES.items() if fresh_too])
def test_a_hostile_manifest_is_one_line_and_loads_no_model(case, resume, stopped, args, tmp_path):
    content, message, _ = MANIFEST_CASES[case]
    folder = Path(shutil.copytree(stopped, tmp_path / "run"))
    manifest = json.loads((folder / "run.json").read_text())
    (folder / "run.json").unlink()
    _put(folder / "run.json", content and content(manifest))
    err = _refused(["--out_dir", str(folder), "--resume"] if resume else args())
    assert str(folder / "run.json") in err and message in err, err


TOKEN_CASES = {
    "metadata random bytes": ("metadata.json", bytes(range(256)) * 8, "corrupt"),
    "metadata a list": ("metadata.json", b"[1, 2]", "corrupt"),
    "metadata empty": ("metadata.json", b"", "corrupt"),
    "vector empty": ("vector.safetensors", b"", "corrupt"),
    "vector random bytes": ("vector.safetensors", bytes(range(256)) * 8, "corrupt"),
    "missing": (None, None, "no steering token 'spanish'"),
}


@pytest.mark.parametrize("case", TOKEN_CASES)
def test_a_hostile_frozen_token_is_one_line_and_loads_no_model(case, tiny_tokens_dir, args, data, tmp_path):
    store = Path(shutil.copytree(tiny_tokens_dir, tmp_path / "store"))
    name, content, message = TOKEN_CASES[case]
    if name is None:
        shutil.rmtree(store / "spanish")
    else:
        (store / "spanish" / name).write_bytes(content)
    err = _refused(args("--stage", "and", "--tokens_dir", str(store), data_file=data["pairs"]))
    assert str(store) in err and message in err, err


# ----------------------------------------------------------------------------- one run per out_dir

def test_a_rerun_into_a_finished_out_dir_is_refused_and_changes_nothing(args, tmp_path):
    _main(args())
    before = _files(tmp_path)
    err = _refused(args())
    assert "finished run" in err and str(tmp_path / "run_tokens") in err and "--restart" in err
    assert _files(tmp_path) == before  # byte for byte: checkpoint, log, summary, manifest, tokens


@pytest.mark.parametrize("change, named", [(["--lr", "2e-2"], "lr: 0.01 in the folder, 0.02 now"),
                                           ("other data", "data: singles.json"),
                                           (["--stop_after", "1", "--epochs", "2"], "epochs: 1 in the folder, 2 now")])
def test_a_run_of_other_settings_or_data_is_refused_naming_what_differs(change, named, args, data, tmp_path):
    _main(args())
    before = _files(tmp_path)
    argv = args(data_file=data["other"]) if change == "other data" else args(*change)
    err = _refused(argv)
    assert str(tmp_path / "run") in err and "another run" in err and named in err and "--restart" in err, err
    assert _files(tmp_path) == before


def test_restart_moves_the_old_run_aside_and_the_new_run_completes(args, tmp_path, reference):
    _main(args("--epochs", "2"))
    old = _files(tmp_path / "run")
    _main(args("--lr", "2e-2", "--restart"))
    [aside] = (tmp_path / "run").glob("replaced-*")
    assert _files(aside) == old  # nothing deleted, nothing changed
    assert _summary(tmp_path / "run")["steps"] == 3 and _log(tmp_path / "run") == reference["2e-2"]
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["config"]["lr"] == 0.02 and manifest["finished"]["steps"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["lr"] == 0.02


def test_a_fresh_run_killed_before_its_first_checkpoint_resumes_itself_not_the_older_run(
        args, tmp_path, reference):
    _main(args("--epochs", "2"))  # the older run: finished at step 6
    _killed_before_first_checkpoint(args("--lr", "2e-2", "--restart"))
    assert not (tmp_path / "run" / "ckpt.pt").exists() and (tmp_path / "run" / "run.json").exists()
    out = _main(["--out_dir", str(tmp_path / "run"), "--resume", "--device", "cpu"]).stdout
    assert "from step 0 (no checkpoint yet)" in out and "resuming at step" not in out
    assert _summary(tmp_path / "run")["steps"] == 3
    log = (tmp_path / "run" / "log.jsonl").read_bytes()
    assert b"\0" not in log and _log(tmp_path / "run") == reference["2e-2"]
    [aside] = (tmp_path / "run").glob("replaced-*")
    assert torch.load(aside / "ckpt.pt", weights_only=True)["step"] == 6  # the older run, untouched


def test_the_same_settings_after_a_kill_before_the_first_checkpoint_start_that_run_again(args, tmp_path, reference):
    _killed_before_first_checkpoint(args())
    _main(args())  # what gpu_pipeline.sh does when there is no ckpt.pt: the same command again
    assert _log(tmp_path / "run") == reference["1e-2"]


def test_an_unfinished_run_with_a_checkpoint_is_not_started_over_without_restart(args, tmp_path):
    _main(args("--stop_after", "1"))
    before = _files(tmp_path)
    err = _refused(args())
    assert "unfinished run" in err and "--resume" in err
    assert _files(tmp_path) == before


def test_a_checkpoint_of_another_run_is_refused(args, tmp_path):
    _main(args("--stop_after", "1", out="x"))
    _main(args("--stop_after", "1", out="y"))  # the same settings, so the same vectors: only the run differs
    shutil.copy(tmp_path / "y" / "ckpt.pt", tmp_path / "x" / "ckpt.pt")
    err = _refused(["--out_dir", str(tmp_path / "x"), "--resume"])
    assert str(tmp_path / "x" / "ckpt.pt") in err and "a checkpoint of another run" in err


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "fresh"])
def test_run_files_without_a_manifest_are_refused(resume, args, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "log.jsonl").write_text('{"step": 1}\n')
    torch.save({"step": 120}, folder / "ckpt.pt")
    before = _files(tmp_path)
    err = _refused(["--out_dir", str(folder), "--resume"] if resume else args())
    assert "no run.json" in err and "--restart" in err and str(folder) in err
    assert _files(tmp_path) == before


def test_resume_of_a_finished_run_is_refused(args, tmp_path):
    _main(args())
    err = _refused(["--out_dir", str(tmp_path / "run"), "--resume"])
    assert "nothing to resume" in err and str(tmp_path / "run_tokens") in err


def test_resume_with_changed_data_is_refused(args, data, tmp_path):
    path = tmp_path / "data.json"
    shutil.copy(data["singles"], path)
    _main(args("--stop_after", "1", data_file=str(path)))
    path.write_text(json.dumps(_records()))
    err = _refused(["--out_dir", str(tmp_path / "run"), "--resume"])
    assert "started on other inputs" in err and "data: data.json" in err


# ----------------------------------------------------------------------------- the log

def test_resume_removes_a_last_line_cut_short_after_the_checkpoint(args, tmp_path, reference):
    _main(args("--stop_after", "2"))
    with open(tmp_path / "run" / "log.jsonl", "ab") as handle:
        handle.write(b'{"step": 3, "lo')  # killed while writing the next line
    _main(["--out_dir", str(tmp_path / "run"), "--resume"])
    assert _log(tmp_path / "run") == reference["1e-2"]


def test_resume_of_a_run_killed_before_its_first_checkpoint_removes_its_cut_short_line(args, tmp_path, reference):
    _killed_before_first_checkpoint(args())
    with open(tmp_path / "run" / "log.jsonl", "ab") as handle:
        handle.write(b'{"step": 4, "lo')
    _main(["--out_dir", str(tmp_path / "run"), "--resume"])
    log = (tmp_path / "run" / "log.jsonl").read_bytes()
    assert b"\0" not in log and _log(tmp_path / "run") == reference["1e-2"]


def test_a_log_shorter_than_the_checkpoint_saw_is_refused_not_padded(args, tmp_path):
    _main(args("--stop_after", "2"))
    log = tmp_path / "run" / "log.jsonl"
    cut = log.read_bytes()[:10]
    log.write_bytes(cut)
    err = _refused(["--out_dir", str(tmp_path / "run"), "--resume"])
    assert str(log) in err and "fewer than" in err
    assert log.read_bytes() == cut  # not padded with NUL bytes up to the checkpoint's position


def test_a_second_trainer_into_a_busy_out_dir_is_refused(args, tmp_path):
    import fcntl
    with open(tmp_path / ".run.trainer.lock", "a") as held:  # a first trainer, running into tmp_path/run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "another trainer is writing" in _refused(args())
    assert not (tmp_path / "run").exists()


def test_tokens_of_another_training_are_never_replaced_silently(args, tmp_path):
    _main(args())
    tokens = tmp_path / "run_tokens"
    before = _files(tokens)
    other = [str(tokens) if arg == str(tmp_path / "other_tokens") else arg for arg in args(out="other")]
    err = _refused(other)
    assert "already holds steering tokens spanish, words_10_50 of another training" in err
    assert "--overwrite_tokens" in err and _files(tokens) == before and not (tmp_path / "other").exists()
