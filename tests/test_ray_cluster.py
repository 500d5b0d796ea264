"""A real two-node Ray cluster on this machine (head + second node on loopback, token authentication as Ray 2.60
has it by default): the grid runs on both nodes with the real default model, directly and through `ray job submit`.

The cluster uses its own ports, temp folder and token file, and only its own processes are stopped (never
`ray stop`, which would stop every Ray cluster on the machine).
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from steer_eval.runs.records import Request, read_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(groups: list[int]) -> None:
    """Every process of the clusters' process groups and their descendants: raylets first, the GCS last."""
    members = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in groups:
                members.add(process)
                members.update(process.children(recursive=True))
        except (ProcessLookupError, psutil.Error):
            continue

    def name(process):
        try:
            return process.name()
        except psutil.Error:
            return ""
    stages = [[p for p in members if name(p) == "raylet"],
              [p for p in members if name(p) not in ("raylet", "gcs_server")],
              [p for p in members if name(p) == "gcs_server"]]
    for stage in stages:
        for process in stage:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(stage, timeout=3)
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="se-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = base / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    common = ["--num-cpus", "1", "--object-store-memory", "300000000", "--temp-dir", str(base / "tmp"),
              "--dashboard-agent-listen-port", "0", "--metrics-export-port", "0", "--disable-usage-stats"]
    head = [RAY, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard",
            "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
            str(_free_port()), *common]
    second = [RAY, "start", "--address", f"127.0.0.1:{port}", "--resources", '{"second_node": 1}', *common]
    groups = []
    try:
        for command in (head, second):
            # A new session per node: its daemons keep that process group, which is how they are stopped.
            process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            groups.append(process.pid)
            output, _ = process.communicate(timeout=180)
            assert process.returncode == 0, output[-3000:]
        yield {"env": env, "address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}",
               "base": base}
    finally:
        _stop(groups)


def _grid(model_dir, output: Path) -> list[str]:
    return ["grid", "--backend", "hf", "--model", str(model_dir), "--k", "1", "--combination", "german",
            "--combination", "french", "--control-method", "text", "--num-prompts", "4", "--max-new-tokens", "8",
            "--chunk-size", "1", "--actors", "2", "--output-dir", str(output)]


def _check_records(output: Path) -> None:
    keys = [Request.from_json(row).key for row in read_rows(output / "records.jsonl")]
    assert len(keys) == len(set(keys)) == 8


def _nodes_that_worked(log: str) -> dict[str, int]:
    [line] = [line for line in log.splitlines() if line.startswith("evaluations per Ray node: ")]
    pairs = line.removeprefix("evaluations per Ray node: ").split(", ")
    return {node: int(count) for node, count in (pair.split(" ") for pair in pairs)}


def test_grid_runs_on_both_nodes_of_a_token_authenticated_cluster(cluster, default_model_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "steer_eval.cli", *_grid(default_model_dir, tmp_path / "grid"),
                           "--address", cluster["address"]], env=cluster["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    nodes = _nodes_that_worked(done.stderr)
    assert len(nodes) == 2 and all(count > 0 for count in nodes.values()) and sum(nodes.values()) == 8
    _check_records(tmp_path / "grid")


def test_without_the_token_the_connection_is_refused_in_one_line(cluster, tmp_path):
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run([sys.executable, "-m", "steer_eval.cli", "grid", "--backend", "simulate", "--k", "1",
                           "--num-prompts", "1", "--actors", "1", "--address", cluster["address"],
                           "--output-dir", str(tmp_path / "grid")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "RAY_AUTH_MODE=token" in done.stderr and "Traceback" not in done.stderr


def test_ray_job_submit_runs_the_grid_on_the_cluster(cluster, default_model_dir, tmp_path):
    output = tmp_path / "job"
    done = subprocess.run([RAY, "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(REPO), "--",
                           "python", "-m", "steer_eval.cli", *_grid(default_model_dir, output)],
                          env=cluster["env"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    nodes = _nodes_that_worked(done.stdout + done.stderr)
    assert len(nodes) == 2 and sum(nodes.values()) == 8
    _check_records(output)
