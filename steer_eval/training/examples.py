"""Training examples of self-distillation and what the trainers build from them: the student's prompt with steering
slots, the teacher's prompt with a sampled instruction paraphrase, the epoch order, the initial vectors and the
`<and>` orthogonality penalty (method: docs/training.md).

Shared by trainers/train.py, trainers/train_prosv.py and benchmarks/bench_train.py, so the three train on the same
examples and teachers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from steer_eval.scoring.behaviors import AND_TOKEN, get_behavior
from steer_eval.steering.assembly import assemble
from steer_eval.steering.embedding_space import InputEmbeddings
from steer_eval.training.inputs import check_record


@dataclass(frozen=True)
class Example:
    prompt: str
    behaviors: tuple
    student: object  # AssembledPrompt with steering slots
    response_ids: tuple


def make_examples(records, tokenizer, stage, max_response_tokens, chat_template_kwargs=None) -> list[Example]:
    examples = []
    for number, row in enumerate(records, 1):
        check_record(row, f"record {number}", stage)  # one behaviour each, or seen pairs for `and`
        behaviors = tuple(row["behaviors"])
        student = assemble(row["prompt"], behaviors, tokenizer, control_method="steering", mode="composition",
                           chat_template_kwargs=chat_template_kwargs)
        # The end-of-turn token is part of the target: length behaviours are largely about when to stop.
        response = tokenizer.encode(row["response"], add_special_tokens=False)[:max_response_tokens - 1]
        examples.append(Example(row["prompt"], behaviors, student, tuple(response) + (tokenizer.eos_token_id,)))
    return examples


def teacher_prompt(example: Example, tokenizer, rng: random.Random, chat_template_kwargs=None):
    """The same prompt with a natural-language instruction: one paraphrase per behaviour, sampled."""
    instructions = [rng.choice(get_behavior(b).instructions) for b in example.behaviors]
    return assemble(example.prompt, example.behaviors, tokenizer, control_method="text", instructions=instructions,
                    chat_template_kwargs=chat_template_kwargs)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    # A function of (seed, epoch, example) only, so a resumed run samples the same paraphrases.
    return random.Random(f"{seed}:{epoch}:{index}")


def orthogonality_penalty(and_vector, behaviour_vectors):
    """sum_b cos(e_and, e_b)^2: keeps <and> from copying any one behaviour (zero at the zero vector)."""
    if not behaviour_vectors:
        return and_vector.new_zeros(())
    others = torch.stack(list(behaviour_vectors))
    return (F.cosine_similarity(and_vector.unsqueeze(0), others, dim=-1) ** 2).sum()


def semantic_init(behavior_id, tokenizer, embeddings: InputEmbeddings):
    """Mean of the input embeddings (as the model's embedding module makes them: the steering space) of the
    behaviour's first (canonical) instruction's tokens."""
    ids = tokenizer.encode(get_behavior(behavior_id).instructions[0], add_special_tokens=False)
    return embeddings.rows(torch.tensor(ids, device=embeddings.device)).float().mean(0)


AND_INITS = ("zero", "random")


def random_and_init(frozen_vectors, hidden_size: int, seed: int) -> torch.Tensor:
    """The `--and_init random` start of <and> (the paper's ablation of its zero start): a Gaussian direction drawn
    from `seed` on the CPU (the same vector on any device), scaled to the mean norm of the frozen behaviour tokens it
    composes, so it starts on the scale of the vectors it sits between."""
    direction = torch.randn(hidden_size, generator=torch.Generator().manual_seed(seed))
    norm = torch.stack([v.detach().float().norm().cpu() for v in frozen_vectors]).mean()
    return direction / direction.norm() * norm


def initial_vectors(stage, examples, tokenizer, embeddings: InputEmbeddings, store, identity, and_init="zero",
                    seed=0):
    """(trainable fp32 parameters, frozen vectors). Stage behaviour: one semantically initialised vector per
    behaviour in the data. Stage and: <and> at zero (`and_init="random"`: `random_and_init`); the behaviour tokens
    it composes, loaded and frozen."""
    if stage == "behaviour":
        names = sorted({e.behaviors[0] for e in examples})
        return {b: torch.nn.Parameter(semantic_init(b, tokenizer, embeddings)) for b in names}, {}
    seen = sorted({b for e in examples for b in e.behaviors})
    frozen = {b: store.load(b, identity).vector.to(embeddings.device) for b in seen}
    start = (random_and_init(frozen.values(), embeddings.hidden_size, seed) if and_init == "random"
             else torch.zeros(embeddings.hidden_size))
    return {AND_TOKEN: torch.nn.Parameter(start.float().to(embeddings.device))}, frozen


def student_deltas(directions, factors, behaviors):
    """PrOSV's student (trainers/train_prosv.py): (batch, hidden) factor_b * direction_b / |direction_b| for each
    example's behaviour."""
    return torch.stack([factors[b] * directions[b] / directions[b].norm() for b in behaviors])
