"""Linear time: every behaviour's verifier on 24 adversarial inputs (steer_eval/scoring/stress.py) takes 3.5-7.5x as
long on a megabyte as on a quarter megabyte (measured; memory and cache effects grow with size), quadratic time 16x.
Before scorer 2, "```" + 8,000 spaces took ~100 s and "." * 16,000 ~4 s (regex backtracking). The check is a ratio
on one machine, so a slow or busy machine does not fail it (an absolute limit of 1 s failed once on a loaded CI
machine at 1.01 s, linear all along).
"""
import pytest

from steer_eval.scoring.stress import adversarial_inputs, best_time, slowest_call

INPUTS = adversarial_inputs(1_000_000)
QUARTERS = adversarial_inputs(250_000)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_every_verifier_takes_linear_time_on_adversarial_input(name):
    seconds, behaviors = slowest_call(INPUTS[name], repeat=2)
    if seconds < 0.05:
        return  # a megabyte in under 50 ms: too quick to time a ratio, and far from any blow-up
    quarter = best_time(behaviors.split("+"), QUARTERS[name], repeat=3)
    assert seconds / quarter < 12, f"{behaviors}: {quarter:.3f} s on 250 kB but {seconds:.3f} s on 1 MB ({name})"
