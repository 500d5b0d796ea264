"""CUDA graphs of the frozen decoder over packed sequences, for the distillation step on a GPU.

A small model on a large GPU is launch-bound: the step waits on Python and kernel launches, not on arithmetic
(results/bench/train_speed.md: on an H200 a batch of 8 took as long as a batch of 32). A CUDA graph records a pass's
kernels once and replays them with one launch. Graphs need fixed shapes, so the batch is laid out in a fixed shape:

- **packing**: the sequences of a batch (responses of very different lengths) are packed first-fit-decreasing into
  rows of `width` tokens (the longest sequence rounded up to a multiple of `LENGTH_STEP`), several short sequences to a
  row, instead of one right-padded row each (on the default model's German teacher data, 32 sequences took 30 rows
  of 320 positions, 87% of them real tokens; the step ran 7% faster than with one row each).
  Each sequence keeps its own positions (0, 1, ...) and attends causally to its own tokens only (a block-diagonal
  mask), so its hidden states are those of the sequence alone;
- **shapes**: the number of rows is rounded up to a multiple of `ROW_STEP`, and the forward and backward of each
  (rows, width) shape are captured the first time that shape comes up (`torch.cuda.make_graphed_callables`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

# Coarser steps waste padded positions, finer ones mean more shapes to capture (a second or so each, once).
LENGTH_STEP = 64
ROW_STEP = 4


class GraphCaptureError(RuntimeError):
    """The decoder could not be captured as a CUDA graph (it synchronises with the host, or branches on data)."""


def padded_length(length: int, step: int = LENGTH_STEP) -> int:
    return -(-length // step) * step


@dataclass(frozen=True)
class Packing:
    """Where each sequence's tokens sit in `rows` packed rows of `width` positions (indices into flattened views)."""
    rows: int
    width: int
    gather: torch.Tensor  # (rows*width,) packed position <- input position (sequences*longest); padding <- one past
    scatter: torch.Tensor  # (sequences*longest,) input position <- packed position; the input's padding <- 0
    positions: torch.Tensor  # (rows, width) each token's position within its own sequence
    segments: torch.Tensor  # (rows, width) the sequence a position holds; each padding position is its own

    def attention_mask(self) -> torch.Tensor:
        """(rows, 1, width, width), True where query q may attend to key k: k <= q in the same sequence (a padding
        position attends to itself only, so no query is left without keys)."""
        same = self.segments[:, :, None] == self.segments[:, None, :]
        causal = torch.ones(self.width, self.width, dtype=torch.bool, device=same.device).tril()
        return (same & causal)[:, None]


def pack(lengths: Sequence[int], longest: int, length_step: int = LENGTH_STEP, row_step: int = ROW_STEP,
         device="cpu", share_rows: bool = True) -> Packing:
    """First-fit-decreasing packing of sequences of `lengths` (right-padded to `longest` in the input); without
    `share_rows`, each sequence in a row of its own, in order."""
    width = padded_length(max(lengths), length_step)
    used, placed = [], [None] * len(lengths)  # used[row]: columns taken; placed[i]: (row, first column)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]) if share_rows else range(len(lengths)):
        row = next((r for r, taken in enumerate(used) if taken + lengths[i] <= width and share_rows), len(used))
        if row == len(used):
            used.append(0)
        placed[i] = (row, used[row])
        used[row] += lengths[i]
    rows = padded_length(len(used), row_step)
    gather = torch.full((rows * width,), len(lengths) * longest, dtype=torch.long)
    scatter = torch.zeros(len(lengths) * longest, dtype=torch.long)
    positions = torch.zeros(rows * width, dtype=torch.long)
    segments = -1 - torch.arange(rows * width)
    for i, (row, column) in enumerate(placed):
        packed = torch.arange(row * width + column, row * width + column + lengths[i])
        gather[packed] = torch.arange(i * longest, i * longest + lengths[i])
        scatter[i * longest:i * longest + lengths[i]] = packed
        positions[packed] = torch.arange(lengths[i])
        segments[packed] = i
    to = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return Packing(rows, width, to(gather), to(scatter), to(positions.view(rows, width)),
                   to(segments.view(rows, width)))


class DecoderGraphs:
    """`graphs(embeds, lengths)` is the decoder's last hidden states (sequences, longest, hidden) for right-padded
    input embeddings whose sequences have `lengths` real tokens, computed by replaying captured graphs over the packed
    layout; gradients flow back to `embeds` through the captured backward. Positions past a sequence's length hold
    no meaningful value. `share_rows=False` gives each sequence a right-padded row of its own instead (mask-free
    attention; the layout `benchmarks/bench_train.py --graph_layouts padded` compares against).

    The model must stay frozen: graphs read its weights where they were at capture. All shapes share one memory pool,
    so the memory held is about that of the largest shape, not the sum. Sharing is safe because a step replays one
    shape's forward and then its own backward with no other shape's forward between them, which is how
    `distillation_step` runs: teacher forward (no backward), then the student's forward and backward.
    """

    def __init__(self, model, length_step: int = LENGTH_STEP, row_step: int = ROW_STEP, share_rows: bool = True):
        self.decoder = model.get_decoder()
        self.length_step, self.row_step, self.share_rows = length_step, row_step, share_rows
        self.pool = torch.cuda.graph_pool_handle()
        self.graphed = {}
        self.capture_seconds = 0.0

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
        return self.decoder(inputs_embeds=embeds, position_ids=positions, attention_mask=mask,
                            use_cache=False).last_hidden_state

    def __call__(self, embeds: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        sequences, longest, hidden = embeds.shape
        packing = pack(lengths, longest, self.length_step, self.row_step, embeds.device, self.share_rows)
        shape = (packing.rows, packing.width)
        if shape not in self.graphed:
            self.graphed[shape] = self._capture(shape, embeds)
        source = torch.cat([embeds.reshape(-1, hidden), embeds.new_zeros(1, hidden)])
        packed = source[packing.gather].view(*shape, hidden)
        # One sequence a row, right-padded: the causal mask alone keeps padding out of view (mask-free attention).
        mask = (packing.attention_mask(),) if self.share_rows else ()
        out = self.graphed[shape](packed, packing.positions, *mask)
        return out.reshape(-1, hidden)[packing.scatter].view(sequences, longest, hidden)

    def _capture(self, shape, like: torch.Tensor):
        started = time.perf_counter()
        rows, width = shape
        sample = (torch.zeros(rows, width, like.shape[-1], dtype=like.dtype, device=like.device, requires_grad=True),
                  torch.arange(width, device=like.device).expand(rows, width).contiguous())
        if self.share_rows:
            causal = torch.ones(width, width, dtype=torch.bool, device=like.device).tril()
            sample += (causal.expand(rows, 1, width, width).contiguous(),)
        try:
            with torch.enable_grad():  # the first pass of a shape may be a teacher's, under no_grad
                graphed = torch.cuda.make_graphed_callables(self._forward, sample, pool=self.pool)
        except RuntimeError as error:
            raise GraphCaptureError(f"this model's decoder cannot be captured as a CUDA graph "
                                    f"({str(error).splitlines()[0]}); train with --cuda_graphs off") from error
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - started
        return graphed
