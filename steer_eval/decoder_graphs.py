"""CUDA graphs of the frozen decoder, for the distillation step on a GPU.

A small model on a large GPU is launch-bound: the step waits on Python and kernel launches, not on arithmetic
(results/bench/train_speed.md: on an H200 a batch of 8 takes as long as a batch of 32). A CUDA graph records a pass's
kernels once and replays them all with one launch. Graphs need fixed shapes, so each pass is right-padded to a length
bucket (a multiple of `LENGTH_STEP`), and the forward and backward of each (rows, bucket) shape are captured the
first time that shape comes up (`torch.cuda.make_graphed_callables`).

Right padding needs no attention mask: under the causal mask a real position never attends to a later one, and every
padding position comes after all real ones, so the real positions' hidden states are those of the unpadded rows. The
decoder then takes attention's mask-free causal path, which is also free of host synchronisation (a padding mask is
inspected on the host), as capture requires.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

# Longer buckets waste padded positions, shorter ones mean more shapes to capture (each holds a few graphs' worth
# of bookkeeping and costs a second or so once).
LENGTH_STEP = 64


class GraphCaptureError(RuntimeError):
    """The decoder could not be captured as a CUDA graph (it synchronises with the host, or branches on data)."""


def padded_length(length: int, step: int = LENGTH_STEP) -> int:
    return -(-length // step) * step


class DecoderGraphs:
    """`graphs(embeds)` is the decoder's last hidden states for right-padded input embeddings (rows, length, hidden),
    computed by replaying captured graphs; gradients flow back to `embeds` through the captured backward.

    The model must stay frozen: graphs read its weights where they were at capture. All shapes share one memory pool,
    so the memory held is about that of the largest shape, not the sum. Sharing is safe because a step replays one
    shape's forward and then its own backward with no other shape's forward between them, which is how
    `distillation_step` runs: teacher forward (no backward), then the student's forward and backward.
    """

    def __init__(self, model, length_step: int = LENGTH_STEP):
        self.decoder = model.get_decoder()
        self.length_step = length_step
        self.pool = torch.cuda.graph_pool_handle()
        self.graphed = {}
        self.capture_seconds = 0.0

    def _forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        rows, length, _ = embeds.shape
        shape = (rows, padded_length(length, self.length_step))
        if shape not in self.graphed:
            self.graphed[shape] = self._capture(shape, embeds)
        padded = F.pad(embeds, (0, 0, 0, shape[1] - length))
        return self.graphed[shape](padded)[:, :length]

    def _capture(self, shape, like: torch.Tensor):
        started = time.perf_counter()
        sample = torch.zeros(*shape, like.shape[-1], dtype=like.dtype, device=like.device, requires_grad=True)
        try:
            with torch.enable_grad():  # the first pass of a shape may be a teacher's, under no_grad
                graphed = torch.cuda.make_graphed_callables(self._forward, (sample,), pool=self.pool)
        except RuntimeError as error:
            raise GraphCaptureError(f"this model's decoder cannot be captured as a CUDA graph "
                                    f"({str(error).splitlines()[0]}); train with --cuda_graphs off") from error
        torch.cuda.synchronize()
        self.capture_seconds += time.perf_counter() - started
        return graphed
