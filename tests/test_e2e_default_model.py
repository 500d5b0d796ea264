"""End-to-end on the real default model (SmolLM2-135M-Instruct)."""
import pytest

from steer_eval.backends.generation import GenerationConfig
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.scoring.verdict import verify

pytestmark = pytest.mark.e2e


def test_text_instruction_german_is_mostly_detected_as_german(default_hf):
    prompts = [p.prompt for p in bundled_prompts("test")[:8]]
    assembled = [default_hf.assemble(p, ["german"], control_method="text") for p in prompts]
    responses = default_hf.generate(assembled, GenerationConfig(max_new_tokens=40), progress=False)
    followed = [verify(["german"], r).followed for r in responses]
    assert sum(followed) > len(prompts) / 2, list(zip(prompts, responses))
