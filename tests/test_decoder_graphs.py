"""The distillation step with the decoder as CUDA graphs (steer_eval.training.decoder_graphs).

On CPU the capture is replaced by the plain callable, so everything around it runs: packing sequences into rows with
a block-diagonal causal mask, one capture per shape, gradients back to the vectors. The capture itself is tested where a
CUDA device is present (the lent GPU; results/bench/train_speed.md records that run).
"""
import random

import pytest
import torch

from steer_eval.training import decoder_graphs

from steer_eval.training import distillation
from steer_eval.steering.assembly import AssembledPrompt

VOCAB = 300


def tiny_model(device="cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_batch(rows=8, seed=0):
    """Teachers longer than students (they hold the instruction), long and short responses in turn (so short
    sequences share packed rows)."""
    rng = random.Random(seed)

    def prompt(length, slot):
        ids = tuple(rng.randrange(3, VOCAB) for _ in range(length))
        slots = ((length - 3, "german"),) if slot else ()
        return AssembledPrompt(ids, slots, "p", ("german",), "steering" if slot else "text", "composition", None)

    teachers = [prompt(rng.randint(20, 70), False) for _ in range(rows)]
    students = [prompt(rng.randint(8, 30), True) for _ in range(rows)]
    responses = [tuple(rng.randrange(3, VOCAB) for _ in range(rng.randint(80, 120) if i % 2 else rng.randint(2, 20)))
                 for i in range(rows)]
    return teachers, students, responses


def step(model, batch, vector, graphs=None, backward=True, temperature=2.0):
    vector.grad = None
    loss = distillation.distillation_step(model, *batch, {"german": vector}, temperature, graphs=graphs,
                                          backward=backward)
    return loss, None if vector.grad is None else vector.grad.clone()


@pytest.fixture
def captures(monkeypatch):
    """Capture replaced by the callable itself; records each captured shape and what capture was given."""
    shapes = []

    def capture(function, sample_args, pool=None):
        embeds, positions, *mask = sample_args
        assert embeds.requires_grad and not positions.requires_grad and not any(m.requires_grad for m in mask)
        assert torch.is_grad_enabled() and pool == "pool"
        shapes.append(tuple(embeds.shape[:2]))
        return function

    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: "pool")
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    return shapes


def test_padded_length_rounds_up_to_the_step():
    assert [decoder_graphs.padded_length(n, 64) for n in (1, 63, 64, 65, 200)] == [64, 64, 64, 128, 256]


def test_packing_puts_each_sequence_whole_into_one_row_with_its_own_positions_and_mask():
    lengths, longest = [50, 10, 30, 64, 5, 33], 70
    packing = decoder_graphs.pack(lengths, longest, length_step=32, row_step=2)
    assert packing.width == 64 and packing.rows == 4  # rows: 64 | 50+10 | 33+30 | 5, rounded up to a multiple of 2
    embeds = torch.arange(len(lengths) * longest, dtype=torch.float32)  # each input position's own index
    source = torch.cat([embeds, torch.tensor([-1.0])])
    packed = source[packing.gather].view(packing.rows, packing.width)
    assert torch.equal(packed.reshape(-1)[packing.scatter].view(len(lengths), longest)[:, :5],
                       embeds.view(len(lengths), longest)[:, :5])
    mask = packing.attention_mask()[:, 0]
    for i, length in enumerate(lengths):
        where = (packing.segments == i).nonzero()
        row, columns = where[0, 0].item(), where[:, 1]
        assert len(where) == length and (where[:, 0] == row).all()  # whole, in one row, contiguous
        assert torch.equal(columns, torch.arange(columns[0], columns[0] + length))
        assert torch.equal(packed[row, columns], torch.arange(i * longest, i * longest + length, dtype=torch.float32))
        assert torch.equal(packing.positions[row, columns], torch.arange(length))
        block = mask[row][columns][:, columns]
        assert torch.equal(block, torch.ones(length, length, dtype=torch.bool).tril())
        assert mask[row][columns].sum() == block.sum()  # nothing outside its own sequence
    assert (packed == -1).sum() == packing.rows * packing.width - sum(lengths)  # the rest is padding
    assert (mask.sum(-1) >= 1).all()  # padding positions see themselves: no empty attention row


@pytest.mark.parametrize("share_rows", [True, False])
def test_packed_passes_give_the_masked_step_loss_and_gradient(captures, share_rows):
    model, batch = tiny_model(), random_batch()
    vector = torch.nn.Parameter(torch.randn(64, generator=torch.Generator().manual_seed(1)))
    expected_loss, expected_grad = step(model, batch, vector)
    graphs = decoder_graphs.DecoderGraphs(model, length_step=16, row_step=1, share_rows=share_rows)
    loss, grad = step(model, batch, vector, graphs=graphs)
    assert all((rows <= 5) == share_rows for rows, _ in graphs.graphed)  # 8 sequences: shared rows, or 8 rows
    # Packing changes the matmuls' shapes, hence the last float bits (as length groups do).
    assert torch.allclose(loss, expected_loss, rtol=1e-4)
    assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-8) and expected_grad.abs().sum() > 0


def test_each_padded_shape_is_captured_once(captures):
    model, batch = tiny_model(), random_batch()
    graphs = decoder_graphs.DecoderGraphs(model, length_step=16, row_step=2)
    vector = torch.nn.Parameter(torch.randn(64))
    step(model, batch, vector, graphs=graphs)
    expected = set()
    for prompts in batch[:2]:
        lengths = [len(p.input_ids) + len(r) for p, r in zip(prompts, batch[2])]
        packing = decoder_graphs.pack(lengths, max(lengths), 16, 2)
        expected.add((packing.rows, packing.width))
    assert set(captures) == expected and len(captures) == len(expected) == len(graphs.graphed)
    step(model, batch, vector, graphs=graphs, backward=False)  # validation: forward only, the same shapes
    assert len(captures) == len(expected)
    step(model, random_batch(rows=3, seed=5), vector, graphs=graphs)  # another batch may bring new shapes
    assert len(captures) == len(set(captures)) == len(graphs.graphed)


def test_graphs_are_chosen_by_device_and_refused_off_cuda():
    assert distillation.training_graphs("auto", "cuda:0") and not distillation.training_graphs("auto", "cpu")
    assert distillation.training_graphs("on", "cuda") and not distillation.training_graphs("off", "cuda")
    with pytest.raises(ValueError, match="--cuda_graphs off"):
        distillation.training_graphs("on", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_graphs_replay_the_eager_step_on_cuda(dtype):
    model, batch = tiny_model("cuda", dtype), random_batch()
    vector = torch.nn.Parameter(torch.randn(64, device="cuda"))
    expected_loss, expected_grad = step(model, batch, vector)
    graphs = decoder_graphs.DecoderGraphs(model, length_step=32)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    for _ in range(3):  # replays, not only the capturing call, give the step's loss and gradient
        loss, grad = step(model, batch, vector, graphs=graphs)
        assert torch.allclose(loss, expected_loss, rtol=tolerance)
        assert torch.allclose(grad, expected_grad, rtol=tolerance, atol=tolerance * expected_grad.abs().max())
    other = random_batch(seed=3)  # another batch: known shapes replay on new inputs, new ones are captured
    other_loss, other_grad = step(model, other, vector)
    loss, grad = step(model, other, vector, graphs=graphs)
    assert torch.allclose(loss, other_loss, rtol=tolerance) and not torch.allclose(loss, expected_loss)
    assert torch.allclose(grad, other_grad, rtol=tolerance, atol=tolerance * other_grad.abs().max())
