"""vLLM's own log lines go to a file unless asked for, whether vLLM is imported before or after the route is set."""
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

# What an engine does at start (in this process and in its engine-core child): configure logging from the
# environment, then log.
LOG_A_LINE = ("from vllm.config.logging import LoggingConfig; from vllm.logger import configure_logging, init_logger; "
              "configure_logging(LoggingConfig()); init_logger('vllm.engine_test').info('engine says hello')")


def _python(code, tmp_path):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STEER_EVAL_HOME": str(tmp_path)})


@pytest.mark.parametrize("vllm_first", [False, True])
def test_engine_lines_go_to_the_file(tmp_path, vllm_first):
    log = tmp_path / "run" / "engine.log"
    route = f"from steer_eval.backends.engine_log import route_vllm_logs; print(route_vllm_logs({str(log)!r}))"
    code = f"import vllm.logger; {route}; {LOG_A_LINE}" if vllm_first else f"{route}; {LOG_A_LINE}"
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(log)
    assert "engine says hello" in log.read_text() and "engine says hello" not in result.stderr + result.stdout


def test_a_child_process_inherits_the_route(tmp_path):
    log = tmp_path / "engine.log"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {LOG_A_LINE!r}], check=True)"
    result = _python(f"from steer_eval.backends.engine_log import route_vllm_logs; route_vllm_logs({str(log)!r}); "
                     + child, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "engine says hello" in log.read_text()


def test_dash_keeps_them_on_stderr(tmp_path):
    result = _python(f"from steer_eval.backends.engine_log import route_vllm_logs; route_vllm_logs('-'); {LOG_A_LINE}",
                     tmp_path)
    assert "engine says hello" in result.stderr and "engine says hello" not in result.stdout
