"""The steering tokens shipped for the default model load on CPU, match its embedding space, and steer."""
import pytest
import torch

from steer_eval.scoring.behaviors import AND_TOKEN, BEHAVIORS
from steer_eval.backends.generation import GenerationConfig
from steer_eval.scoring.prompts import bundled_prompts
from steer_eval.scoring.verdict import verify
from steer_eval.steering.tokens import TokenStore, default_tokens_dir, load_vectors

pytestmark = pytest.mark.e2e
EVERY_BEHAVIOUR = {*BEHAVIORS, AND_TOKEN}  # every lm-eval task runs on the defaults


def test_shipped_tokens_load_with_their_training_config(default_hf):
    store = TokenStore(default_tokens_dir("SmolLM2-135M-Instruct"))
    tokens = [name for name in store.names() if "/" not in name]
    assert set(tokens) == EVERY_BEHAVIOUR
    for name in tokens:
        token = store.load(name, default_hf.identity)  # raises unless trained for this embedding space
        assert token.vector.shape == (default_hf.identity.hidden_size,) and token.vector.isfinite().all()
        config = token.training_config
        assert config["stage"] == ("and" if name == AND_TOKEN else "behaviour") and config["summary"]["steps"] > 0


def test_shipped_german_token_steers_on_cpu(default_hf):
    store = TokenStore(default_tokens_dir("SmolLM2-135M-Instruct"))
    default_hf.add_vectors(load_vectors(store, ["german"], default_hf.identity))  # the shipped vector, not a test's
    prompts = [p.prompt for p in bundled_prompts("test")[:8]]
    steered = [default_hf.assemble(p, ["german"], control_method="steering") for p in prompts]
    responses = default_hf.generate(steered, GenerationConfig(max_new_tokens=32), progress=False)
    followed = [verify(["german"], r).followed for r in responses]
    assert sum(followed) >= 5, list(zip(prompts, responses))  # no instruction at all: 0 of 60 in the probe


SHIPPED = ("german", "spanish", "french", "italian", "portuguese", "words_10_50", "sentences_1")


def test_shipped_baseline_vectors_load_for_this_model(default_hf):
    """results/baselines: CAA at layer 15 x1 and PrOSV at layer 15 on the last 4 prompt positions, trained factors."""
    store = TokenStore(default_tokens_dir("SmolLM2-135M-Instruct"))
    assert {name for name in store.names() if "/" in name} == {f"{kind}/{b}" for kind in ("caa", "prosv")
                                                               for b in SHIPPED}
    for behavior in SHIPPED:
        caa = store.load(f"caa/{behavior}", default_hf.identity)
        prosv = store.load(f"prosv/{behavior}", default_hf.identity)
        assert (caa.intervention.layer, caa.intervention.positions, caa.intervention.factor) == (15, 0, 1.0)
        assert (prosv.intervention.layer, prosv.intervention.positions) == (15, 4)
        assert 30 < prosv.intervention.factor < 60  # trained up from 8
        assert torch.linalg.vector_norm(prosv.vector).item() == pytest.approx(1.0, abs=1e-4)


def test_the_steering_space_of_the_default_model_is_the_one_the_tokens_were_trained_in(default_hf):
    """Llama scales nothing in its embedding module: the shipped tokens' embedding fingerprint is the model's, and the
    inputs_embeds of today's assembly are bit for bit the raw weight rows the tokens were trained against."""
    from steer_eval.steering.assembly import embed
    store = TokenStore(default_tokens_dir("SmolLM2-135M-Instruct"))
    assert default_hf.embeddings.scale == 1.0
    vectors = load_vectors(store, ["german", AND_TOKEN, "words_10_50"], default_hf.identity)
    assembled = default_hf.assemble("Why is the sky blue?", ["german", "words_10_50"])
    rows = default_hf.embedding_weight[torch.tensor(assembled.input_ids)].clone()
    for position, name in assembled.slots:
        rows[position] = vectors[name]
    assert torch.equal(embed(assembled, default_hf.embeddings, vectors), rows)
    assert all(store.load(name).model.fingerprint == default_hf.identity.fingerprint for name in vectors)
