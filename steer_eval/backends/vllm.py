"""vLLM backend: one long-lived engine per process; steering vectors live in spare rows of its embedding table.

Input design (chosen by measurement, docs/vllm.md): each steering token gets its own row after the last
id the tokenizer can produce (backends/extended_vocab.py), so a steering prompt reaches vLLM as plain token ids
and runs at plain-prompt speed with prefix caching intact; `prompt_embeds` would cost 20-36% of throughput.
Two duties come with it, both done inside the engine by `SteeringRowsWorker`:
- the spare rows' logits are set to -inf, so they are never sampled and every probability is normalised over the
  original vocabulary exactly as in the original model (this is also what makes prompt log-probs usable for
  `loglikelihood`);
- a row rewritten with a new vector invalidates cached KV blocks of prompts that used it, so the prefix cache
  is reset whenever a row that held another vector is overwritten.
"""
from __future__ import annotations

import gc
import logging
from typing import Sequence

import torch

from steer_eval.steering.assembly import AssembledPrompt
from steer_eval.backends.base import SteeringBackend, check_vector
from steer_eval.backends.engine_log import default_engine_log, route_vllm_logs
from steer_eval.backends.extended_vocab import DEFAULT_SPARE_ROWS, extended_model
from steer_eval.steering.embedding_space import InputEmbeddings, scale_from_config
from steer_eval.compat import check_supported
from steer_eval.errors import PromptTooLongError
from steer_eval.backends.generation import GenerationConfig
from steer_eval.steering.models import read_input_embeddings, resolve_model_path

logger = logging.getLogger(__name__)

WORKER_EXTENSION = f"{__name__}.SteeringRowsWorker"
CPU_KV_CACHE_BYTES = 2 * 1024 ** 3  # vLLM-CPU otherwise reserves a fraction of the (shared) machine's RAM


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as oneDNN, which vLLM-CPU runs on, sees it."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_engine_defaults(engine_kwargs: dict, native_bf16: bool) -> dict:
    """What vLLM-CPU runs with when the caller left it open (docs/benchmarks/cpu-engine.md has the measurements):
    - eager: torch.compile adds ~75 s to every start on two cores (vLLM 0.32 fails to reload its compile cache)
      for ~5% faster decoding, which pays back only after ~300k generated tokens;
    - float32 under dtype auto on a CPU without native bfloat16 (no AVX512-BF16/AMX): vLLM-CPU would run the
      checkpoint in bfloat16, emulated there, 6x slower than float32 (and float32 is what the HF backend runs)."""
    options = {"enforce_eager": True, **engine_kwargs}
    if "gpu_memory_utilization" not in options:
        options.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
    if options.get("dtype", "auto") == "auto" and not native_bf16:
        options["dtype"] = "float32"
    return options


def check_written_rows(worker_results: list[list], rows: torch.Tensor, dtype: torch.dtype) -> None:
    """`steer_eval_write_rows`' answers from every worker must hold `rows` as the engine's dtype stores them."""
    stored = rows.new_full(rows.shape, float("nan"))
    for worker_rows in worker_results:
        for i, row in enumerate(worker_rows):
            if row is not None:  # each row lives on exactly one tensor-parallel worker
                stored[i] = torch.tensor(row)
    if not torch.equal(stored, rows.to(dtype).float()):
        raise RuntimeError("steering rows read back from the vLLM engine differ from the vectors written")


class SteeringRowsWorker:
    """Mixed into vLLM's worker (engine arg worker_extension_cls); reached through `LLM.collective_rpc`."""

    def _steer_eval_embedding(self):
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
        model = self.model_runner.model
        tables = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding)
                  and not isinstance(m, ParallelLMHead)]
        if len(tables) != 1:
            raise RuntimeError(f"expected one input-embedding table in {type(model).__name__}, found {len(tables)}")
        return model, tables[0]

    def steer_eval_mask_rows_from(self, first_masked_id: int) -> None:
        """Logits of ids >= first_masked_id become -inf, in full and in tensor-parallel-local logits."""
        model, _ = self._steer_eval_embedding()
        processor = model.logits_processor
        original = processor.forward

        def masked_forward(lm_head, hidden_states, embedding_bias=None, skip_gather=False):
            logits = original(lm_head, hidden_states, embedding_bias, skip_gather)
            if logits is not None:
                start = lm_head.shard_indices.org_vocab_start_index if skip_gather else 0
                logits[..., max(first_masked_id - start, 0):] = float("-inf")
            return logits

        processor.forward = masked_forward

    def steer_eval_write_rows(self, row_ids: list[int], vectors: list[list[float]]) -> list[list[float]]:
        """Write vectors into rows of the input-embedding table; return the rows as now stored (for a check).

        Plain lists cross the RPC boundary (vLLM's utility calls do not carry tensors); float32 values are
        exact as Python floats.
        """
        _, table = self._steer_eval_embedding()
        start = table.shard_indices.org_vocab_start_index
        end = table.shard_indices.org_vocab_end_index
        stored = []
        for row, vector in zip(row_ids, vectors):
            if start <= row < end:  # under tensor parallelism each worker holds one slice of the rows
                with torch.no_grad():
                    table.weight[row - start] = torch.tensor(vector, dtype=torch.float32).to(table.weight.dtype)
                stored.append(table.weight[row - start].float().tolist())
            else:
                stored.append(None)
        return stored


class VLLMBackend(SteeringBackend):
    """Generation and log-likelihoods through vLLM. The engine starts on first use and lives until `shutdown()`."""

    name = "vllm"

    def __init__(self, model_spec: str, tokens_dir=None, *, max_model_len: int = 2048,
                 gpu_memory_utilization: float | None = None, seed: int = 0, tensor_parallel_size: int = 1,
                 spare_rows: int = DEFAULT_SPARE_ROWS, engine_log: str | None = None,
                 chat_template_kwargs: dict | None = None, **engine_kwargs):
        """`engine_log`: a file for vLLM's own log lines ("-": stderr; default: <STEER_EVAL_HOME>/logs/)."""
        from transformers import AutoTokenizer
        self.engine_log = route_vllm_logs(default_engine_log() if engine_log is None else engine_log)
        logger.info(f"vLLM engine log: {self.engine_log}")
        source = resolve_model_path(model_spec)
        self.extended = extended_model(source, spare_rows)
        tokenizer = AutoTokenizer.from_pretrained(source)
        if len(tokenizer) > self.extended.vocab_size:
            raise ValueError(f"the tokenizer of {model_spec} has {len(tokenizer)} tokens but the model only "
                             f"{self.extended.vocab_size} embedding rows")
        embeddings = InputEmbeddings(read_input_embeddings(source), scale_from_config(source))
        super().__init__(model_spec, tokenizer, embeddings, tokens_dir, chat_template_kwargs)
        self.max_model_len = max_model_len
        self.engine_kwargs = {"max_model_len": max_model_len, "seed": seed,
                              "tensor_parallel_size": tensor_parallel_size, **engine_kwargs}
        if gpu_memory_utilization is not None:
            self.engine_kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if not torch.cuda.is_available():
            self.engine_kwargs = cpu_engine_defaults(self.engine_kwargs, cpu_has_native_bf16())
        self._llm = None
        self._row_of: dict[str, int] = {}  # steering-token name -> spare-row index
        self._row_vector: dict[int, torch.Tensor] = {}  # what each written row holds

    @property
    def llm(self):
        """The engine (started on first access; one per backend, reused for every call)."""
        if self._llm is None:
            import vllm
            from vllm import LLM
            check_supported("vllm", vllm.__version__)
            self._llm = LLM(model=str(self.extended.folder), tokenizer=str(self.extended.folder),
                            worker_extension_cls=WORKER_EXTENSION, **self.engine_kwargs)
            self._llm.collective_rpc("steer_eval_mask_rows_from", args=(self.extended.vocab_size,))
        return self._llm

    def shutdown(self) -> None:
        """Stop the engine and free its memory; the next call starts a new one."""
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None
            self._row_vector.clear()  # the next engine starts with zero rows
            gc.collect()

    def _sync_rows(self, vectors: dict[str, torch.Tensor]) -> None:
        """Put each needed vector in a spare row, reusing rows whose vector is unchanged."""
        names = set(vectors)
        if len(names) > self.extended.spare_rows:
            raise ValueError(f"{len(names)} distinct steering tokens in one call, but the engine has "
                             f"{self.extended.spare_rows} spare rows; pass spare_rows=... to VLLMBackend")
        writes: dict[int, torch.Tensor] = {}
        for name in sorted(names):
            vector = vectors[name]
            check_vector(name, vector, self.identity.hidden_size)
            row = self._row_of.get(name)
            if row is None:
                row = self._free_row(names)
                self._row_of[name] = row
            if row not in self._row_vector or not torch.equal(self._row_vector[row], vector):
                writes[row] = vector
        if not writes:
            return
        stale = any(row in self._row_vector for row in writes)
        row_ids = [self.extended.row_id(row) for row in writes]
        # The engine scales every row it looks up as the model's embedding module does (Gemma: by sqrt(hidden)).
        stacked = torch.stack([self.embeddings.spare_row(vector) for vector in writes.values()])
        check_written_rows(self.llm.collective_rpc("steer_eval_write_rows", args=(row_ids, stacked.tolist())),
                           stacked, self.dtype)
        self._row_vector.update(writes)
        if stale and not self.llm.reset_prefix_cache():
            raise RuntimeError("could not reset vLLM's prefix cache after changing a steering row")

    def _free_row(self, needed: set[str]) -> int:
        taken = set(self._row_of.values())
        free = [row for row in range(self.extended.spare_rows) if row not in taken]
        if free:
            return free[0]
        evicted = next(name for name in self._row_of if name not in needed)
        return self._row_of.pop(evicted)

    @property
    def dtype(self) -> torch.dtype:
        """What the engine computes in (under dtype auto vLLM picks it; on CPU see `cpu_engine_defaults`)."""
        return self.llm.llm_engine.vllm_config.model_config.dtype

    def token_ids(self, prompt: AssembledPrompt) -> list[int]:
        """The prompt as the engine sees it: each steering slot holds its token's spare-row id."""
        ids = list(prompt.input_ids)
        for position, name in prompt.slots:
            ids[position] = self.extended.row_id(self._row_of[name])
        return ids

    def _prepare(self, prompts: Sequence[AssembledPrompt], room: Sequence[int]) -> list[dict]:
        """Engine inputs, after checking each prompt (and the `room` of tokens it needs after it) fits."""
        vocab = self.extended.vocab_size
        for index, (prompt, needed) in enumerate(zip(prompts, room)):
            if not isinstance(prompt, AssembledPrompt):
                raise TypeError(f"prompt {index} is a {type(prompt).__name__}; pass the output of assemble()")
            if not prompt.input_ids or min(prompt.input_ids) < 0 or max(prompt.input_ids) >= vocab:
                raise ValueError(f"prompt {index} is empty or has token ids outside the vocabulary 0..{vocab - 1}")
            if len(prompt.input_ids) + needed > self.max_model_len:
                raise PromptTooLongError(f"prompt {index} has {len(prompt.input_ids)} tokens and needs {needed} more, "
                                         f"over max_model_len {self.max_model_len}; pass a larger max_model_len")
        self._sync_rows(self.vectors_for(prompts))
        return [{"prompt_token_ids": self.token_ids(prompt)} for prompt in prompts]

    def generate(self, prompts: Sequence[AssembledPrompt], config: GenerationConfig = GenerationConfig(),
                 progress: bool = True) -> list[str]:
        """Greedy by default. With temperature > 0 every request is seeded with `config.seed`, so a prompt's
        sample depends only on the prompt and the seed, not on which other prompts share the batch."""
        from vllm import SamplingParams
        if not prompts:
            return []
        inputs = self._prepare(prompts, [config.max_new_tokens] * len(prompts))
        sampling = SamplingParams(max_tokens=config.max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p if config.temperature > 0 else 1.0,
                                  seed=config.seed if config.temperature > 0 else None,
                                  stop=list(config.stop) or None, skip_special_tokens=True)
        outputs = self.llm.generate(inputs, sampling, use_tqdm=progress)
        return [output.outputs[0].text for output in outputs]

    def loglikelihood(self, requests: Sequence[tuple[AssembledPrompt, str]],
                      progress: bool = True) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | assembled prompt), whether the continuation is the greedy one).

        Computed from the engine's prompt log-probs over context + continuation ids. Because the spare rows'
        logits are -inf, these are normalised over the original vocabulary, as in the original model.
        """
        from vllm import SamplingParams
        if not requests:
            return []
        targets = [self.tokenizer.encode(continuation, add_special_tokens=False) for _, continuation in requests]
        inputs = self._prepare([prompt for prompt, _ in requests], [len(target) + 1 for target in targets])
        for item, target in zip(inputs, targets):
            item["prompt_token_ids"] = item["prompt_token_ids"] + target
        scored = [(i, item) for i, (item, target) in enumerate(zip(inputs, targets)) if target]
        results = [(0.0, True)] * len(requests)
        if not scored:
            return results
        sampling = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([item for _, item in scored], sampling, use_tqdm=progress)
        for (index, item), output in zip(scored, outputs):
            target = targets[index]
            positions = range(len(item["prompt_token_ids"]) - len(target), len(item["prompt_token_ids"]))
            entries = [output.prompt_logprobs[p][item["prompt_token_ids"][p]] for p in positions]
            results[index] = (sum(e.logprob for e in entries), all(e.rank == 1 for e in entries))
        return results
