"""Crash safety of the grid, with real kill -9 at random moments: every record exactly once, on the simulate
backend (the real scheduler, writer and resume, no model), in-process and on Ray (driver and worker kills)."""
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from steer_eval.runs.grid import build_grid
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.runs.records import Request, read_rows

pytestmark = pytest.mark.slow
PROMPTS = 12
GRID = ["--k", "1", "2", "--combination", "german+words_10_50", "--combination", "french+uppercase",
        "--combination", "sentences_1+lowercase", "--combination", "spanish", "--combination", "json",
        "--control-method", "steering", "text", "--num-prompts", str(PROMPTS)]


def _expected_keys() -> set[str]:
    plan = build_grid(bundled_prompts("test")[:PROMPTS], [1, 2], ["steering", "text"], ["composition"],
                      only=[["german", "words_10_50"], ["french", "uppercase"], ["sentences_1", "lowercase"],
                            ["spanish"], ["json"]])
    return {r.key for r in plan}


def _command(output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "steer_eval.cli", "grid", "--backend", "simulate", "--model", "sim", *GRID,
            "--output-dir", str(output), "--chunk-size", "4", *extra]


def _env(mark: str) -> dict:
    # Ray's processes inherit the driver's environment: the mark tells our workers from anyone else's.
    return {**os.environ, "STEER_EVAL_TEST_MARK": mark}


def _marked(mark: str, name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if name in (entry / "cmdline").read_bytes().decode(errors="replace") and \
                    f"STEER_EVAL_TEST_MARK={mark}".encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def _stop_marked(mark: str) -> None:
    for pid in _marked(mark, ""):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _assert_exactly_once(records: Path) -> None:
    keys = [Request.from_json(row).key for row in read_rows(records)]
    assert len(keys) == len(set(keys)), "a record was written twice"
    assert set(keys) == _expected_keys()


def _finish(output: Path, mark: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(output, *extra), env=_env(mark), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _kill_loop(tmp_path: Path, extra: tuple[str, ...], kills: int, rng: random.Random) -> Path:
    """`kills` kill -9s of the driver, each placed at a random record count in the part of the grid still to run
    (the first early, the last late), each asserted to have landed mid-run; then one run completes the grid."""
    output, mark = tmp_path / "grid", uuid.uuid4().hex
    planned = len(_expected_keys())
    records = output / "records.jsonl"
    try:
        for kill in range(kills):
            before = _lines(records)
            # Spread over what is left: kill i of n waits for a record count in the i-th of n equal slices.
            low = before + 1 + (planned - before - 2) * kill // (kills + 1)
            target = rng.randint(low, max(low, before + 1 + (planned - before - 2) * (kill + 1) // (kills + 1)))
            process = subprocess.Popen(_command(output, *extra), env=_env(mark), stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 300
            while _lines(records) < target and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.2))  # and somewhere between two writes
            at_kill = _lines(records)
            assert process.poll() is None, f"kill {kill + 1}: the run ended (or failed) before it could be killed"
            process.kill()
            process.wait()
            assert before < at_kill < planned, f"kill {kill + 1} did not land mid-run: {before}, {at_kill}/{planned}"
            _stop_marked(mark)  # a killed driver's private Ray instance goes with it
        done = _finish(output, mark, *extra)
        _assert_exactly_once(records)
        table = done.stdout
        analyzed = subprocess.run([sys.executable, "-m", "steer_eval.cli", "analyze", str(output)],
                                  capture_output=True, text=True, check=True).stdout
        assert table == analyzed  # the grid's own summary is the one `analyze` gives
        return output
    finally:
        _stop_marked(mark)


def test_in_process_driver_killed_at_random_moments(tmp_path):
    _kill_loop(tmp_path, ("--delay", "0.05"), kills=4, rng=random.Random(1))


def test_ray_driver_killed_at_random_moments(tmp_path):
    _kill_loop(tmp_path, ("--delay", "0.1", "--actors", "2"), kills=2, rng=random.Random(2))


def test_ray_workers_killed_during_a_run_cost_only_their_chunks(tmp_path):
    output, mark, rng = tmp_path / "grid", uuid.uuid4().hex, random.Random(3)
    records = output / "records.jsonl"
    try:
        process = subprocess.Popen(_command(output, "--delay", "0.05", "--actors", "2"), env=_env(mark),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = 0
        deadline = time.monotonic() + 300
        while killed < 3 and process.poll() is None and time.monotonic() < deadline:
            workers = _marked(mark, "ray::GridWorker")
            if workers and _lines(records) > 0:
                time.sleep(rng.uniform(0.2, 1.5))
                try:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        assert killed >= 2, "the grid ended before workers could be killed; make it longer"
        assert "goes back to the queue" in stderr
        _assert_exactly_once(records)
    finally:
        _stop_marked(mark)


def test_a_model_that_fails_in_the_actors_is_one_clear_line(tmp_path):
    """Errors of the user's are raised as themselves, not as Ray's ActorDiedError traceback."""
    mark = uuid.uuid4().hex
    try:
        done = subprocess.run(_command(tmp_path / "grid", "--actors", "2", "--delay", "-1"), env=_env(mark),
                              capture_output=True, text=True, timeout=300)
    finally:
        _stop_marked(mark)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "delay must be >= 0" in done.stderr


def test_a_chunk_that_keeps_killing_its_worker_ends_the_run_naming_it(tmp_path):
    from steer_eval.runs.backend_spec import BackendSpec
    from steer_eval.errors import WorkerFailedError
    from steer_eval.backends.generation import GenerationConfig
    from steer_eval.runs.runner import run

    plan = build_grid(bundled_prompts("test")[:6], [1], ["text"], ["composition"], only=[["german"], ["french"]])
    poison = bundled_prompts("test")[3].id
    output = tmp_path / "records.jsonl"
    with pytest.raises(WorkerFailedError, match=r"chunk \d+ \(1 evaluations, first .*lost its worker 3 times"):
        run(plan, BackendSpec("simulate", "sim", options={"crash_on": poison}), GenerationConfig(), output,
            actors=2, chunk_size=1, progress=False)
    written = {Request.from_json(row).prompt_id for row in read_rows(output)}
    assert poison not in written and len(list(read_rows(output))) >= 6  # every other chunk was written


def test_sigterm_stops_the_run_cleanly_and_takes_its_workers_along(tmp_path):
    output, mark = tmp_path / "grid", uuid.uuid4().hex
    try:
        process = subprocess.Popen(_command(output, "--delay", "0.1", "--actors", "2"), env=_env(mark),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while _lines(output / "records.jsonl") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 130, stderr[-2000:]
        assert "steer-eval: interrupted" in stderr and "Traceback" not in stderr
        deadline = time.monotonic() + 30
        while _marked(mark, "ray::GridWorker") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _marked(mark, "ray::GridWorker")
        _finish(output, mark)  # and the same command completes it, every record once
        _assert_exactly_once(output / "records.jsonl")
    finally:
        _stop_marked(mark)
