"""The self-distillation step of the trainers (trainers/train.py, trainers/train_prosv.py), made fast.

One step: the frozen model reads each teacher prompt (with the instruction) and each student prompt (with steering
slots) followed by the same response; the loss is KL(teacher || student) of the distributions softened by T, times
T^2, averaged over every response token of the batch. Three things make it faster than the plain version
(`benchmarks/bench_train.py` measures both side by side) without changing the loss:

- ids are packed on the host and sent to the device once per pass, not one small copy per example;
- the batch runs in micro-batches of similar length (`group_size`), so fewer padded positions are computed; the
  gradients of the groups add up to the batch's gradient;
- the vocabulary projection and the KL run over chunks of response positions, and the gradient of the student's
  hidden states is formed in the same pass, so the (tokens x vocabulary) logits never exist in full;
- on a GPU, the decoder's passes replay CUDA graphs (`steer_eval.training.decoder_graphs`), since there a small model's step
  is bound by kernel launches, not arithmetic.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from steer_eval.steering.embedding_space import InputEmbeddings

# Rows of logits per chunk: about 256 MB of float32 logits per chunk at a 49k vocabulary.
CHUNK_ELEMENTS = 2 ** 26


@dataclass(frozen=True)
class PackedBatch:
    """Right-padded ids of prompt + response, where the steering slots sit and which positions predict a response
    token (the last prompt position through the second-to-last response position)."""
    ids: torch.Tensor  # (rows, longest)
    mask: torch.Tensor  # (rows, longest), 1 on real tokens
    slot_rows: torch.Tensor
    slot_cols: torch.Tensor
    slot_names: tuple
    response_rows: torch.Tensor
    response_cols: torch.Tensor
    lengths: tuple  # real tokens per row, on the host


def pack_batch(prompts: Sequence, responses: Sequence[Sequence[int]], device) -> PackedBatch:
    """`prompts` are AssembledPrompts, `responses` the response ids (ending in end-of-turn) of the same rows."""
    lengths = [len(p.input_ids) + len(r) for p, r in zip(prompts, responses)]
    ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    slot_rows, slot_cols, slot_names, response_rows, response_cols = [], [], [], [], []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        sequence = list(prompt.input_ids) + list(response)
        ids[row, :len(sequence)] = torch.tensor(sequence)
        for col, name in prompt.slots:
            slot_rows.append(row)
            slot_cols.append(col)
            slot_names.append(name)
        start = len(prompt.input_ids) - 1
        response_rows += [row] * len(response)
        response_cols += range(start, start + len(response))
    mask = (torch.arange(max(lengths)) < torch.tensor(lengths)[:, None]).long()
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)  # noqa: E731
    return PackedBatch(ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), as_tensor(slot_rows),
                       as_tensor(slot_cols), tuple(slot_names), as_tensor(response_rows), as_tensor(response_cols),
                       tuple(lengths))


def embed_batch(packed: PackedBatch, embeddings: InputEmbeddings,
                vectors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(rows, longest, hidden) inputs_embeds as the embedding module makes them, zero at padding, each slot
    replaced by its (trainable) vector."""
    embeds = embeddings.rows(packed.ids) * packed.mask[..., None].to(embeddings.dtype)
    if not packed.slot_names:
        return embeds
    missing = sorted({name for name in packed.slot_names if name not in vectors})
    if missing:
        raise KeyError(f"no steering vector for {', '.join(missing)}")
    replacement = torch.stack([vectors[name].to(embeddings.dtype) for name in packed.slot_names])
    return embeds.index_put((packed.slot_rows, packed.slot_cols), replacement)


def response_hidden(model, packed: PackedBatch, embeddings: InputEmbeddings, vectors, graphs=None) -> torch.Tensor:
    """The decoder's last hidden states at response positions only, (response tokens, hidden); through `graphs`
    (a DecoderGraphs) if given."""
    embeds = embed_batch(packed, embeddings, vectors)
    if graphs is not None:
        hidden = graphs(embeds, packed.lengths)
    else:
        hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=packed.mask).last_hidden_state
    return hidden[packed.response_rows, packed.response_cols]


class _ChunkedKL(torch.autograd.Function):
    """Per-row KL(softmax(t/T) || softmax(s/T)) with s, t = hidden @ head^T, computed over row chunks.

    Row i's KL depends on student row i only, so the forward also forms d KL_i / d student_i chunk by chunk (replaying
    autograd's chain for the plain version: kl_div, log_softmax, /T, cast, linear) and keeps only that
    (rows, hidden) gradient; the backward scales it by each row's incoming gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, head, bias, temperature, chunk_rows):
        per_row = torch.empty(student.shape[0], dtype=torch.float32, device=student.device)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        for start in range(0, student.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            teacher_logp = F.log_softmax(F.linear(teacher[rows], head, bias).float() / temperature, dim=-1)
            student_raw = F.linear(student[rows], head, bias)
            student_logp = F.log_softmax(student_raw.float() / temperature, dim=-1)
            per_row[rows] = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="none").sum(-1)
            if grad is not None:
                grad_logits = torch._log_softmax_backward_data(-teacher_logp.exp(), student_logp, -1, torch.float32)
                grad[rows] = F.linear((grad_logits / temperature).to(student_raw.dtype), head.t())
        ctx.save_for_backward(grad)
        return per_row

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output[:, None].to(grad.dtype), None, None, None, None, None


def response_kl(student_hidden, teacher_hidden, head_weight, temperature: float, head_bias=None) -> torch.Tensor:
    """Per-row KL(teacher || student) at temperature T over response positions, (rows,), differentiable in the
    student's hidden states; the logits exist one chunk of rows at a time."""
    chunk_rows = max(1, CHUNK_ELEMENTS // head_weight.shape[0])
    return _ChunkedKL.apply(student_hidden, teacher_hidden.detach(), head_weight, head_bias, temperature, chunk_rows)


def training_dtype(requested: str, device: str) -> str:
    """The frozen model's dtype: `auto` is bfloat16 on a CUDA device that has it (no float32 master copy is needed,
    nothing of the model trains), float32 elsewhere."""
    if requested != "auto":
        return requested
    return "bfloat16" if str(device).startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"


def training_group_size(requested: int, device: str) -> int:
    """Examples per micro-batch; -1 chooses by device, as measured (results/bench/train_speed.md): on a CPU padding is
    compute, and groups of 4 ran a batch of 32 2.4x faster than one padded batch; on a GPU each extra forward costs
    launch time, so the whole batch (0)."""
    if requested >= 0:
        return requested
    return 0 if str(device).startswith("cuda") else 4


def training_graphs(requested: str, device: str) -> bool:
    """Whether the decoder runs as CUDA graphs: `auto` on a CUDA device, where they ran a batch of 32 of the default
    model at 3x the reference step's tokens/s (results/bench/train_speed.md); `on` anywhere else is refused (graphs
    are CUDA's)."""
    on_cuda = str(device).startswith("cuda")
    if requested == "on" and not on_cuda:
        raise ValueError(f"CUDA graphs need a CUDA device, and this training runs on {device}; use --cuda_graphs off")
    return requested == "on" or (requested == "auto" and on_cuda)


def length_groups(lengths: Sequence[int], group_size: int) -> list[list[int]]:
    """Row indices in micro-batches of `group_size`, longest rows together (0: the whole batch, in order)."""
    if group_size <= 0 or group_size >= len(lengths):
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + group_size] for i in range(0, len(order), group_size)]


def distillation_step(model, teachers: Sequence, students: Sequence, responses: Sequence[Sequence[int]],
                      vectors: Mapping[str, torch.Tensor], temperature: float, *, group_size: int = 0,
                      backward: bool = True,
                      student_context: Callable[[list[int]], contextlib.AbstractContextManager] | None = None,
                      graphs=None) -> torch.Tensor:
    """The batch's loss (detached). With `backward`, the gradient of that loss accumulates into the vectors
    (and whatever `student_context(rows)` puts into the student pass, e.g. PrOSV's hooks). `graphs` (a
    DecoderGraphs) runs the decoder's passes as CUDA graphs; it cannot see hooks a `student_context` adds."""
    embeddings = InputEmbeddings.of(model)
    head = model.get_output_embeddings()
    device = embeddings.device
    total_rows = sum(len(r) for r in responses)
    lengths = [len(t.input_ids) + len(s.input_ids) + 2 * len(r) for t, s, r in zip(teachers, students, responses)]
    loss = torch.zeros((), dtype=torch.float32, device=device)
    for rows in length_groups(lengths, group_size):
        group_responses = [responses[i] for i in rows]
        with torch.no_grad():
            teacher = response_hidden(model, pack_batch([teachers[i] for i in rows], group_responses, device),
                                      embeddings, {}, graphs)
        with torch.set_grad_enabled(backward), (student_context(rows) if student_context else contextlib.nullcontext()):
            student = response_hidden(model, pack_batch([students[i] for i in rows], group_responses, device),
                                      embeddings, vectors, graphs)
            per_row = response_kl(student, teacher, head.weight, temperature, head.bias)
            # One group: the same reductions as the plain `kl.mean() * T**2`, so the value is identical.
            share = (per_row.mean() if len(rows) == len(lengths) else per_row.sum() / total_rows) * temperature ** 2
        if backward and share.requires_grad:
            share.backward()
        loss += share.detach()
    return loss
