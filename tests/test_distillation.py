"""The fast distillation step against the plain one it replaced (kept here as the oracle), on the tiny model."""
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steer_eval.training import distillation
from steer_eval.training.examples import make_examples, teacher_prompt
from steer_eval.training.inputs import read_training_data
from steer_eval.steering.embedding_space import InputEmbeddings

REPO = Path(__file__).resolve().parents[1]


def plain_step(model, teachers, students, responses, vectors, temperature):
    """The trainer's step before the speed work: per-example embedding, one padded batch, logits at response
    positions in full, then KL mean * T^2."""
    embeddings = InputEmbeddings.of(model)

    def logits(prompts, vecs):
        from steer_eval.steering.assembly import embed
        rows, positions = [], []
        for prompt, response in zip(prompts, responses):
            rows.append(torch.cat([embed(prompt, embeddings, vecs), embeddings.rows(torch.tensor(response))]))
            start = len(prompt.input_ids) - 1
            positions.append(torch.arange(start, start + len(response)))
        embeds = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long) for r in rows], batch_first=True)
        index = torch.cat([torch.full_like(p, i) for i, p in enumerate(positions)])
        hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return model.get_output_embeddings()(hidden[index, torch.cat(positions)]).float()

    with torch.no_grad():
        teacher = logits(teachers, {})
    student = logits(students, vectors)
    teacher_logp = F.log_softmax(teacher / temperature, dim=-1)
    student_logp = F.log_softmax(student / temperature, dim=-1)
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)
    return kl.mean() * temperature ** 2


@pytest.fixture(scope="module")
def batch(tiny_hf, tmp_path_factory):
    prompts = ["Why is the sky blue?", "Tell me about cats and their long history with people in Egypt", "Hi",
               "Describe a dog", "What is the capital of France and why?", "Name three colours"]
    records = [{"prompt": p, "response": "Weil das Licht gestreut wird. " * (1 + 3 * (i % 3)),
                "behaviors": ["german"]} for i, p in enumerate(prompts)]
    path = tmp_path_factory.mktemp("distill") / "german.json"
    path.write_text(json.dumps(records))
    examples = make_examples(read_training_data([path])[0], tiny_hf.tokenizer, "behaviour", 64)
    teachers = [teacher_prompt(e, tiny_hf.tokenizer, random.Random(i)) for i, e in enumerate(examples)]
    return teachers, [e.student for e in examples], [e.response_ids for e in examples]


def _vector(tiny_hf, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(tiny_hf.embedding_weight.shape[1], generator=generator))


def test_one_group_gives_the_identical_loss_and_gradient(tiny_hf, batch):
    teachers, students, responses = batch
    plain_vector, fast_vector = _vector(tiny_hf), _vector(tiny_hf)
    expected = plain_step(tiny_hf.model, teachers, students, responses, {"german": plain_vector}, 10.0)
    expected.backward()
    loss = distillation.distillation_step(tiny_hf.model, teachers, students, responses, {"german": fast_vector}, 10.0)
    assert torch.equal(loss, expected.detach())
    assert torch.allclose(fast_vector.grad, plain_vector.grad, rtol=1e-5, atol=1e-9)
    assert plain_vector.grad.abs().sum() > 0


def test_small_chunks_and_length_groups_keep_the_loss_and_gradient(tiny_hf, batch, monkeypatch):
    teachers, students, responses = batch
    plain_vector = _vector(tiny_hf, 1)
    expected = plain_step(tiny_hf.model, teachers, students, responses, {"german": plain_vector}, 2.0)
    expected.backward()
    monkeypatch.setattr(distillation, "CHUNK_ELEMENTS", 7 * tiny_hf.embedding_weight.shape[0])  # 7 rows a chunk
    for group_size in (0, 1, 2, 4):
        fast_vector = _vector(tiny_hf, 1)
        loss = distillation.distillation_step(tiny_hf.model, teachers, students, responses, {"german": fast_vector},
                                              2.0, group_size=group_size)
        # Other padding or chunk sizes change the matmuls in the last float bits; a KL of near-equal distributions
        # cancels heavily, so its relative error is larger than the logits' (measured: 2e-4 at most).
        assert torch.allclose(loss, expected.detach(), rtol=1e-3), group_size
        assert torch.allclose(fast_vector.grad, plain_vector.grad, rtol=1e-5, atol=1e-9), group_size


def test_without_backward_nothing_gets_a_gradient(tiny_hf, batch):
    teachers, students, responses = batch
    vector = _vector(tiny_hf)
    loss = distillation.distillation_step(tiny_hf.model, teachers, students, responses, {"german": vector}, 10.0,
                                          backward=False, group_size=2)
    assert vector.grad is None and loss > 0 and not loss.requires_grad


def test_training_steps_leave_the_model_as_loaded(tiny_model_dir, batch):
    """The trainer's model (steering.models.load_model) is frozen: steps of the distillation loss and AdamW move
    the vector only, and no weight of the model gets a gradient or a new value."""
    from steer_eval.steering.models import load_model
    teachers, students, responses = batch
    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    vector = torch.nn.Parameter(torch.zeros(model.get_input_embeddings().weight.shape[1]))
    optimizer = torch.optim.AdamW([vector], lr=0.1)
    for _ in range(2):
        distillation.distillation_step(model, teachers, students, responses, {"german": vector}, 2.0, group_size=2)
        optimizer.step()
        optimizer.zero_grad()
    assert vector.abs().sum() > 0
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in model.parameters())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def test_the_kl_is_zero_when_student_reads_what_the_teacher_reads(tiny_hf, batch):
    teachers, _, responses = batch
    loss = distillation.distillation_step(tiny_hf.model, teachers, teachers, responses, {}, 10.0, backward=False)
    assert loss.abs() < 1e-6


def test_pack_marks_slots_and_the_positions_that_predict_the_response(tiny_hf, batch):
    _, students, responses = batch
    packed = distillation.pack_batch(students, responses, "cpu")
    assert packed.ids.shape == (len(students), max(len(s.input_ids) + len(r) for s, r in zip(students, responses)))
    assert packed.slot_names == ("german",) * len(students)
    for row, (student, response) in enumerate(zip(students, responses)):
        cols = packed.response_cols[packed.response_rows == row]
        # position p predicts token p + 1: the response tokens, the last one being end-of-turn
        assert packed.ids[row, cols + 1].tolist() == list(response)
        assert packed.mask[row].sum() == len(student.input_ids) + len(response)
        assert packed.slot_cols[row] == student.slots[0][0]
    embeds = distillation.embed_batch(packed, tiny_hf.embeddings, {"german": torch.ones(64)})
    assert torch.equal(embeds[0, packed.slot_cols[0]], torch.ones(64))
    assert torch.equal(embeds[packed.mask == 0], torch.zeros_like(embeds[packed.mask == 0]))


def test_a_missing_vector_is_named(tiny_hf, batch):
    _, students, responses = batch
    with pytest.raises(KeyError, match="german"):
        distillation.embed_batch(distillation.pack_batch(students, responses, "cpu"), tiny_hf.embeddings, {})


def test_length_groups_put_the_longest_rows_together():
    assert distillation.length_groups([5, 9, 1, 7], 0) == [[0, 1, 2, 3]]
    assert distillation.length_groups([5, 9, 1, 7], 2) == [[1, 3], [0, 2]]
    assert distillation.length_groups([5, 9, 1], 8) == [[0, 1, 2]]


def test_response_kl_is_the_kl_of_the_softened_distributions():
    generator = torch.Generator().manual_seed(0)
    student, teacher, head = (torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator),
                              torch.randn(11, 8, generator=generator))
    t = 3.0
    p = torch.softmax(teacher @ head.T / t, -1)
    expected = (p * (p.log() - torch.log_softmax(student @ head.T / t, -1))).sum(-1)
    assert torch.allclose(distillation.response_kl(student, teacher, head, t), expected, atol=1e-6)
    assert distillation.response_kl(teacher, teacher, head, t).abs().max() < 1e-6
    bias = torch.randn(11, generator=generator)  # an output layer with a bias (e.g. Phi-2's)
    p = torch.softmax((teacher @ head.T + bias) / t, -1)
    expected = (p * (p.log() - torch.log_softmax((student @ head.T + bias) / t, -1))).sum(-1)
    assert torch.allclose(distillation.response_kl(student, teacher, head, t, bias), expected, atol=1e-6)
    wanted = student.clone().requires_grad_(True)
    logits = (wanted @ head.T + bias) / t
    (p * (p.log() - torch.log_softmax(logits, -1))).sum(-1).sum().backward()
    fast = student.clone().requires_grad_(True)
    distillation.response_kl(fast, teacher, head, t, bias).sum().backward()
    assert torch.allclose(fast.grad, wanted.grad, atol=1e-6)


def test_device_defaults_are_chosen_in_one_place():
    assert distillation.training_group_size(-1, "cpu") == 4 and distillation.training_group_size(-1, "cuda:1") == 0
    assert distillation.training_group_size(8, "cpu") == 8 and distillation.training_group_size(0, "cpu") == 0
    assert distillation.training_dtype("auto", "cpu") == "float32"
    assert distillation.training_dtype("bfloat16", "cpu") == "bfloat16"
