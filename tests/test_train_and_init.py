"""`trainers/train.py --and_init random` (the paper's ablation of <and>'s zero start, issue 28): where <and> starts,
that the trainer takes the setting, and that a default run's identity is what it was before the setting existed."""
import json
import shutil

import torch
from trainer_in_process import train

from steer_eval.steering.tokens import TokenStore
from steer_eval.training.examples import initial_vectors, make_examples, random_and_init

PAIRS = [{"prompt": f"Describe a dog {i}", "response": "Un perro pequeño.",
          "behaviors": ["spanish", "words_10_50"][::1 if i % 2 else -1]} for i in range(4)]


def _store(tiny_tokens_dir, tmp_path) -> TokenStore:
    """Two frozen behaviour tokens of the tiny model, no <and>."""
    for name in ("spanish", "words_10_50"):
        shutil.copytree(tiny_tokens_dir / name, tmp_path / "tokens" / name)
    return TokenStore(tmp_path / "tokens")


def test_random_start_is_seeded_at_the_frozen_tokens_mean_norm(tiny_hf, tiny_tokens_dir, tmp_path):
    store = _store(tiny_tokens_dir, tmp_path)
    examples = make_examples(PAIRS, tiny_hf.tokenizer, "and", 32)
    args = (examples, tiny_hf.tokenizer, tiny_hf.embeddings, store, None)
    params, frozen = initial_vectors("and", *args, and_init="random", seed=3)
    start = params["<and>"].detach()
    assert torch.isclose(start.norm(), torch.stack([v.norm() for v in frozen.values()]).mean())
    assert torch.equal(start, random_and_init(frozen.values(), start.numel(), 3))  # reproducible from the seed
    assert not torch.allclose(start, random_and_init(frozen.values(), start.numel(), 4))
    assert torch.count_nonzero(initial_vectors("and", *args)[0]["<and>"]) == 0  # the default stays zero


def test_the_trainer_takes_and_init(tiny_model_dir, tiny_tokens_dir, tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps(PAIRS))
    store = _store(tiny_tokens_dir, tmp_path)
    runs = {}
    for init in ("zero", "random"):
        store_dir = tmp_path / f"tokens_{init}"
        shutil.copytree(store.directory, store_dir)
        # lr 0: the saved <and> is its start
        result = train("--stage", "and", "--model", str(tiny_model_dir), "--data", str(tmp_path / "pairs.json"),
                       "--tokens_dir", str(store_dir), "--out_dir", str(tmp_path / f"run_{init}"), "--lr", "0",
                       "--batch_size", "4", "--epochs", "1", "--and_init", init)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[init] = json.loads((tmp_path / f"run_{init}" / "run.json").read_text())["config"]
        saved = TokenStore(store_dir).load("<and>")
        assert saved.training_config["and_init"] == init
        frozen = [store.load(b).vector for b in ("spanish", "words_10_50")]
        expected = random_and_init(frozen, saved.vector.numel(), 0) if init == "random" else torch.zeros(64)
        assert torch.equal(saved.vector, expected)
    # A default run is identified as before --and_init existed (older runs still resume); the ablation is not.
    assert "and_init" not in runs["zero"] and runs["random"]["and_init"] == "random"
    refused = train("--stage", "and", "--data", str(tmp_path / "pairs.json"), "--and_init", "gaussian")
    assert refused.returncode == 2 and "--and_init must be zero or random" in refused.stderr
