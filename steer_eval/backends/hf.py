"""Hugging Face transformers backend: batched generation and log-likelihoods from `inputs_embeds`."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from steer_eval.assembly import AssembledPrompt, embed
from steer_eval.backends.base import SteeringBackend, truncate_at_stop
from steer_eval.backends.spec import DEFAULT_HF_BATCH_SIZE
from steer_eval.generation import GenerationConfig
from steer_eval.models import load_model


class HFBackend(SteeringBackend):
    name = "hf"

    def __init__(self, model_spec: str, tokens_dir=None, device: str | None = None, dtype: str = "auto",
                 batch_size: int = DEFAULT_HF_BATCH_SIZE, model=None, tokenizer=None):
        if model is None:
            model, tokenizer = load_model(model_spec, device=device, dtype=dtype)
        self.model = model
        self.batch_size = batch_size
        super().__init__(model_spec, tokenizer, model.get_input_embeddings().weight, tokens_dir)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def shutdown(self) -> None:
        self.model = None
        self._vectors.clear()

    @property
    def device(self) -> torch.device:
        return self.embedding_weight.device

    def _embeddings(self, prompts: Sequence[AssembledPrompt]) -> list[torch.Tensor]:
        vectors = self.vectors_for(prompts)
        return [embed(p, self.embedding_weight, vectors) for p in prompts]

    def _left_padded(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        batch = torch.zeros(len(rows), longest, hidden, dtype=rows[0].dtype, device=self.device)
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            batch[i, longest - row.shape[0]:] = row
            mask[i, longest - row.shape[0]:] = 1
        return batch, mask

    @torch.inference_mode()
    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        # Similar lengths share a batch so little compute goes to padding; results return in input order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
        outputs: list[str] = [""] * len(prompts)
        sampling = ({"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
                    if config.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None,
                                                    "top_k": None})
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch_index, batch in enumerate(tqdm(batches, desc="hf generate", unit="batch", disable=not progress)):
            embeds, mask = self._left_padded(self._embeddings([prompts[i] for i in batch]))
            torch.manual_seed(config.seed + batch_index)
            generated = self.model.generate(inputs_embeds=embeds, attention_mask=mask,
                                            max_new_tokens=config.max_new_tokens,
                                            pad_token_id=self.tokenizer.pad_token_id, **sampling)
            for i, ids in zip(batch, generated):
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                outputs[i] = truncate_at_stop(text, config.stop)
        return outputs

    @torch.inference_mode()
    def next_token_logits(self, prompt: AssembledPrompt) -> torch.Tensor:
        """Logits for the token after the assembled prompt (used to check exact identities)."""
        rows = self._embeddings([prompt])[0].unsqueeze(0)
        return self.model(inputs_embeds=rows).logits[0, -1].float()

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]],
                      progress: bool = True) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | assembled prompt), whether the continuation is the greedy one)."""
        contexts = [prompt for prompt, _ in requests]
        context_rows = self._embeddings(contexts)
        results = []
        for (prompt, continuation), context in tqdm(list(zip(requests, context_rows)), desc="hf loglikelihood",
                                                    disable=not progress):
            target = torch.tensor(self.tokenizer.encode(continuation, add_special_tokens=False),
                                  device=self.device)
            if target.numel() == 0:
                results.append((0.0, True))
                continue
            rows = torch.cat([context, self.embedding_weight[target]]).unsqueeze(0)
            logits = self.model(inputs_embeds=rows).logits[0, context.shape[0] - 1:-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            total = logprobs.gather(1, target.unsqueeze(1)).sum().item()
            greedy = bool((logits.argmax(dim=-1) == target).all())
            results.append((total, greedy))
        return results
