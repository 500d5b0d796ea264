"""Linear time: every behaviour's verifier on 24 adversarial inputs (benchmarks/verifier_speed.py) takes 3.5-7.5x as
long on a megabyte as on a quarter megabyte (measured; memory and cache effects grow with size), quadratic time 16x.
Before scorer 2, "```" + 8,000 spaces took ~100 s and "." * 16,000 ~4 s (regex backtracking). The check is a ratio
on one machine, so a slow or busy machine does not fail it (an absolute limit of 1 s failed once on a loaded CI
machine at 1.01 s, linear all along).
"""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "verifier_speed", Path(__file__).parents[1] / "benchmarks" / "verifier_speed.py")
verifier_speed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(verifier_speed)
INPUTS = verifier_speed.adversarial_inputs(1_000_000)
QUARTERS = verifier_speed.adversarial_inputs(250_000)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_verifier_takes_linear_time_on_adversarial_input(name):
    seconds, behaviors = verifier_speed.slowest_call(INPUTS[name], repeat=2)
    if seconds < 0.05:
        return  # a megabyte in under 50 ms: too quick to time a ratio, and far from any blow-up
    quarter = verifier_speed.best_time(behaviors.split("+"), QUARTERS[name], repeat=3)
    assert seconds / quarter < 12, f"{behaviors}: {quarter:.3f} s on 250 kB but {seconds:.3f} s on 1 MB ({name})"
