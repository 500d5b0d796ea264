"""Linear time: every behaviour's verifier on 24 adversarial 1 MB inputs (benchmarks/verifier_speed.py) in well
under a second. Before scorer 2, "```" + 8,000 spaces took ~100 s and "." * 16,000 ~4 s (regex backtracking)."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "verifier_speed", Path(__file__).parents[1] / "benchmarks" / "verifier_speed.py")
verifier_speed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(verifier_speed)
INPUTS = verifier_speed.adversarial_inputs(1_000_000)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_verifier_is_fast_on_a_megabyte(name):
    seconds, behaviors = verifier_speed.slowest_call(INPUTS[name], repeat=2)
    assert seconds < 1.0, f"{behaviors} took {seconds:.2f} s on {name}"
