"""Hugging Face transformers backend: batched generation and log-likelihoods from `inputs_embeds`."""
from __future__ import annotations

from contextlib import nullcontext
from itertools import groupby
from typing import Sequence

import torch
from tqdm.auto import tqdm

from steer_eval.steering.activation import Intervention, added_to_layers, check_layer
from steer_eval.steering.assembly import AssembledPrompt, embed
from steer_eval.backends.base import SteeringBackend, check_vector, truncate_at_stop
from steer_eval.steering.tokens import TokenError
from steer_eval.backends.generation import DEFAULT_HF_BATCH_SIZE
from steer_eval.steering.embedding_space import InputEmbeddings
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import load_model


class HFBackend(SteeringBackend):
    name = "hf"
    activation_steering = True

    def __init__(self, model_spec: str, tokens_dir=None, device: str | None = None, dtype: str = "auto",
                 batch_size: int = DEFAULT_HF_BATCH_SIZE, model=None, tokenizer=None,
                 chat_template_kwargs: dict | None = None):
        if model is None:
            model, tokenizer = load_model(model_spec, device=device, dtype=dtype)
        self.model = model
        self.batch_size = batch_size
        super().__init__(model_spec, tokenizer, InputEmbeddings.of(model), tokens_dir, chat_template_kwargs)
        self._activation_vectors: dict[str, tuple[Intervention, torch.Tensor]] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def shutdown(self) -> None:
        self.model = None
        self._vectors.clear()
        self._activation_vectors.clear()

    @property
    def device(self) -> torch.device:
        return self.embedding_weight.device

    def _embeddings(self, prompts: Sequence[AssembledPrompt]) -> list[torch.Tensor]:
        vectors = self.vectors_for(prompts)
        return [embed(p, self.embeddings, vectors) for p in prompts]

    def use_activation_vectors(self, tokens) -> None:
        """Use these caa/prosv vectors (SteeringTokens with an intervention, e.g. a sweep's candidates) instead of
        the store's."""
        for token in tokens:
            if token.intervention is None:
                raise TokenError(f"{token.name} is an input-embedding steering token, not a caa/prosv vector; "
                                 "use add_vectors for steering tokens")
            check_vector(token.name, token.vector, self.identity.hidden_size)
            check_layer(self.model, token.intervention.layer)
            self._activation_vectors[token.name] = (token.intervention, token.vector.float().to(self.device))

    def _activations(self, prompts: Sequence[AssembledPrompt], prompt_ends: torch.Tensor | None = None):
        """A context that adds the prompts' caa/prosv vectors inside the model, row by row (nothing for others)."""
        if not any(p.activations for p in prompts):
            return nullcontext()
        missing = {n for p in prompts for n in p.activations} - self._activation_vectors.keys()
        self.use_activation_vectors([self.store.load(name, self.identity) for name in sorted(missing)])
        deltas: dict[tuple, torch.Tensor] = {}
        for row, prompt in enumerate(prompts):
            for name in prompt.activations:
                intervention, vector = self._activation_vectors[name]
                key = (intervention.kind, intervention.layer, intervention.positions)
                if key not in deltas:
                    deltas[key] = torch.zeros(len(prompts), vector.shape[0], device=self.device)
                deltas[key][row] += intervention.factor * vector  # a composition sums its vectors
        return added_to_layers(self.model, [(Intervention(kind, layer, positions, 1.0), delta)
                                            for (kind, layer, positions), delta in deltas.items()], prompt_ends)

    def _batches(self, prompts: Sequence[AssembledPrompt]) -> list[list[int]]:
        """Indices in batches of one control method (activation vectors are added batch-wide) and similar lengths,
        so little compute goes to padding; results return in input order."""
        order = sorted(range(len(prompts)), key=lambda i: (prompts[i].control_method, len(prompts[i].input_ids)))
        batches = []
        for _, group in groupby(order, key=lambda i: prompts[i].control_method):
            group = list(group)
            batches += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        return batches

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
        outputs: list[str] = [""] * len(prompts)
        sampling = ({"do_sample": True, "temperature": config.temperature, "top_p": config.top_p}
                    if config.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None,
                                                    "top_k": None})
        batches = self._batches(prompts)
        for batch_index, batch in enumerate(tqdm(batches, desc="hf generate", unit="batch", disable=not progress)):
            embeds, mask = self._left_padded(self._embeddings([prompts[i] for i in batch]))
            torch.manual_seed(config.seed + batch_index)
            with self._activations([prompts[i] for i in batch]):
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
        with self._activations([prompt]):
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
            rows = torch.cat([context, self.embeddings.rows(target)]).unsqueeze(0)
            with self._activations([prompt], prompt_ends=torch.tensor([context.shape[0]])):
                logits = self.model(inputs_embeds=rows).logits[0, context.shape[0] - 1:-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            total = logprobs.gather(1, target.unsqueeze(1)).sum().item()
            greedy = bool((logits.argmax(dim=-1) == target).all())
            results.append((total, greedy))
        return results
