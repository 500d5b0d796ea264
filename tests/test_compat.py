"""The supported lm-eval / vLLM ranges come from the installed metadata, and a version outside one is one line."""
import logging
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from steer_eval.compat import check_supported, supported_range


def test_ranges_are_the_ones_pyproject_declares():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["cuda"]]
    for name in ("lm-eval", "vllm"):
        [wanted] = [r.specifier for r in declared if r.name == name]
        assert SpecifierSet(supported_range(name)) == wanted and "<" in str(wanted)


@pytest.mark.parametrize("name,version,inside", [("lm-eval", "0.4.13", True), ("lm-eval", "0.5.0", False),
                                                 ("lm-eval", "0.4.12", False), ("vllm", "0.32.0", True),
                                                 ("vllm", "0.11.0", False), ("vllm", "not-a-version", False)])
def test_a_version_outside_the_range_is_one_warning_naming_it(name, version, inside, caplog):
    with caplog.at_level(logging.WARNING, logger="steer_eval"):
        assert check_supported(name, version) is inside
    lines = [r.getMessage() for r in caplog.records]
    if inside:
        assert lines == []
    else:
        [line] = lines
        assert f"{name} {version} is outside" in line and supported_range(name) in line and "\n" not in line


def test_the_installed_versions_are_supported():
    import lm_eval  # noqa: F401
    import vllm
    assert check_supported("lm-eval", metadata.version("lm-eval"))
    assert check_supported("vllm", vllm.__version__)
