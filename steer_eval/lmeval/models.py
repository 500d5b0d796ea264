"""lm-eval model classes `steering_hf` and `steering_vllm`: thin adapters from lm-eval requests to a backend.

Every prompt is built by `assemble()`. On steer-eval tasks (tasks/) the behaviours, their order and the
instruction paraphrases come from the document (`Instance.doc`); on any other task from the `steering` model
argument (e.g. `steering=german+<and>+words_10_50`). Steering tokens sit inside the user turn of the chat
template, so these classes always render it: a chat that lm-eval had rendered through `apply_chat_template`
(`--apply_chat_template`) is mapped back to its system and user turns and assembled the same way.
"""
from __future__ import annotations

import difflib
import logging
from collections import defaultdict

from lm_eval.api.model import LM
from lm_eval.utils import simple_parse_args_string

from steer_eval.steering.activation import unsupported_backend
from steer_eval.steering.assembly import CONTROL_METHODS, MODES, AssembledPrompt, assemble, parse_steering
from steer_eval.backends.generation import DEFAULT_HF_BATCH_SIZE
from steer_eval.runs.backend_spec import BackendSpec
from steer_eval import __version__
from steer_eval.scoring.behaviors import AND_TOKEN, BehaviorError, resolve
from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.backends.generation import DEFAULT_MAX_NEW_TOKENS, GenerationConfig, chat_template_options, split_reasoning
from steer_eval.lmeval.tasks import SteeredResponse
from steer_eval.steering.embedded import DEFAULT_MODEL
from steer_eval.steering.model_store import ModelError
from steer_eval.steering.models import model_label, resolve_model_path
from steer_eval.scoring.verdict import SCORER_VERSION
from steer_eval.runs.workers import BackendPool
from steer_eval.steering.tokens import TokenError, TokenStore, default_tokens_dir

logger = logging.getLogger(__name__)
COMMON_ARGS = ("pretrained", "tokens_dir", "control_method", "mode", "steering", "max_gen_toks", "seed",
               "data_parallel_size", "max_length", "enable_thinking", "chat_template_kwargs")


class ModelArgsError(UserError, TypeError):
    """A --model_args key the class does not take."""


def _refuse_unknown(model: str, unknown, known, more_known=()) -> None:
    if not unknown:
        return
    name = sorted(unknown)[0]
    close = difflib.get_close_matches(name, [*known, *more_known], n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ModelArgsError(f"{model} does not take model_args {', '.join(sorted(unknown))}; {hint}it takes "
                         f"{', '.join(known)}")


def _number(name: str, value, minimum: float | None = 1, kind=int, maximum: float | None = None):
    """A numeric model_arg (lm-eval passes them as strings or numbers), refused in one line when out of range."""
    try:
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ModelArgsError(f"model_args {name}={value} is not {'an integer' if kind is int else 'a number'}; "
                             f"write e.g. {name}={minimum if minimum is not None else 0}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ModelArgsError(f"model_args {name}={value} is out of range; it must be {bounds}")
    return number


def _check_model_exists(spec: str) -> str:
    """The model's folder or hub id, refused before any weights load if neither a folder nor reachable."""
    path = resolve_model_path(spec)
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ModelError(f"pretrained={spec!r} is not an embedded model (smollm2-135m), an existing folder with a "
                         f"config.json, nor a Hugging Face model this machine can load ({str(error).splitlines()[0]}); "
                         "pass pretrained=<folder> or an id the hub serves") from None
    return path


def _parse_steering(steering: str | None, mode: str | None) -> tuple[list[str], str]:
    """'german+<and>+words_10_50' -> (['german', 'words_10_50'], 'composition'); '+' separates items."""
    items = [item.strip() for item in steering.split("+")] if steering else []
    if any(not item for item in items):
        raise BehaviorError(f"steering={steering!r} has an empty item; write e.g. steering=german+{AND_TOKEN}+words_10_50")
    return parse_steering(items, mode)


class SteeringLM(LM):
    """What both model classes share: request -> assembled prompt -> backend -> response with its setting."""

    backend_name: str  # hf | vllm, as the grid runner's BackendSpec names them

    def __init__(self, pretrained: str = DEFAULT_MODEL, tokens_dir: str | None = None,
                 control_method: str = "steering", mode: str | None = None, steering: str | None = None,
                 max_gen_toks: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0, data_parallel_size: int = 1,
                 max_length: int | None = None, enable_thinking: bool | None = None,
                 chat_template_kwargs: str | dict | None = None, backend=None, **backend_kwargs):
        """`backend`: an already loaded backend to wrap (a notebook's, or a test session's shared one).
        `enable_thinking` (as lm-eval's own hf and vllm classes take it) and `chat_template_kwargs` (a JSON object)
        go to the chat template."""
        super().__init__()
        show_on_stderr(logging.getLogger("lm_eval").getEffectiveLevel(), unless_configured=True)
        if control_method not in CONTROL_METHODS:
            raise BehaviorError(f"unknown control_method {control_method!r}; choose one of {', '.join(CONTROL_METHODS)}")
        refusal = unsupported_backend([control_method], self.backend_name, "use --model steering_hf")
        if refusal:
            raise ModelArgsError(refusal)
        if mode is not None and mode not in MODES:
            raise BehaviorError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.pretrained = str(backend.model_spec if backend is not None else pretrained)
        self.model_path = _check_model_exists(self.pretrained) if backend is None else self.pretrained
        self.control_method = control_method
        self.mode = mode or "composition"  # for documents; the fixed list carries its own (see parse_steering)
        self.fixed_behaviors, self.fixed_mode = _parse_steering(steering, mode)
        resolve(self.fixed_behaviors)  # unknown ids and conflicts fail here, not after the model has loaded
        self.max_gen_toks = _number("max_gen_toks", max_gen_toks)
        self.seed = _number("seed", seed, minimum=None)
        self.data_parallel_size = _number("data_parallel_size", data_parallel_size)
        template_options = chat_template_options(chat_template_kwargs, enable_thinking)
        spec = BackendSpec(self.backend_name, self.pretrained, None if tokens_dir is None else str(tokens_dir),
                           {**self.backend_options(**backend_kwargs), "chat_template_kwargs": template_options})
        if backend is not None:
            self.backend = backend
        elif self.data_parallel_size > 1:
            self.backend = BackendPool(spec, self.data_parallel_size)
        else:
            self.backend = self.build_backend(spec)
        self.tokenizer = self.backend.tokenizer
        self.chat_template_kwargs = getattr(backend, "chat_template_kwargs", template_options)
        self.token_store = getattr(self.backend, "store", None) or TokenStore(
            tokens_dir or default_tokens_dir(model_label(self.pretrained)))
        self.max_length = _number("max_length", max_length) if max_length else self._model_context_length()
        self._rendered_chats: dict[str, list[dict]] = {}
        self._fingerprints: dict[str, str] = {}
        logger.info(self.describe())

    def model_info(self) -> dict:
        """How this run steers: printed at start and stored in the results JSON's config (get_model_info)."""
        return {"model": self.pretrained, "model_path": self.model_path, "backend": self.backend_name,
                "tokens_dir": str(self.token_store.directory), "control_method": self.control_method,
                "mode": self.mode, "steering": self.fixed_behaviors, "data_parallel_size": self.data_parallel_size,
                "chat_template_kwargs": self.chat_template_kwargs, "package_version": __version__,
                "scorer_version": SCORER_VERSION}

    def describe(self) -> str:
        info = self.model_info()
        return (f"model {info['model']} ({info['model_path']}), backend {info['backend']}, steering tokens from "
                f"{info['tokens_dir']}, control_method {info['control_method']}, mode {info['mode']}")

    def get_model_info(self) -> dict:
        return {"steer_eval": self.model_info()}

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        # lm-eval adds run-wide options (--batch_size, which defaults to 1, --device); model_args win, where
        # lm-eval's own classes would fail on the duplicate keyword.
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # --- subclass hooks ----------------------------------------------------------------------------------
    def build_backend(self, spec: BackendSpec):
        return spec.build()

    def backend_options(self, **kwargs) -> dict:
        raise NotImplementedError

    # --- prompt building ---------------------------------------------------------------------------------
    def _model_context_length(self) -> int | None:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(resolve_model_path(self.pretrained))
        return getattr(config, "max_position_embeddings", None)

    def _turns(self, context: str) -> tuple[str | None, str]:
        """(system prompt, user prompt) of a context; contexts from apply_chat_template are unrendered."""
        chat = self._rendered_chats.get(context)
        if chat is None:
            return None, context
        roles = [message["role"] for message in chat]
        if roles == ["user"]:
            return None, chat[0]["content"]
        if roles == ["system", "user"]:
            return chat[0]["content"], chat[1]["content"]
        raise BehaviorError(f"steering models read one user turn (after an optional system prompt), got turns {roles}; "
                            "run without --fewshot_as_multiturn and without a task gen_prefix")

    @staticmethod
    def _is_steer_document(doc) -> bool:
        return bool(doc) and "behaviors" in doc and "prompt" in doc

    def _behaviors(self, doc) -> tuple[list[str], str, list[str] | None]:
        """(ordered behaviours, mode, instruction paraphrases or None) for one request's document."""
        if self._is_steer_document(doc):
            return list(doc["behaviors"]), self.mode, doc.get("instructions")
        return self.fixed_behaviors, self.fixed_mode, None

    def assembled(self, request) -> AssembledPrompt:
        behaviors, mode, instructions = self._behaviors(request.doc)
        if self._is_steer_document(request.doc):
            system, user = None, request.doc["prompt"]
        else:
            system, user = self._turns(request.args[0])
        return assemble(user, behaviors, self.tokenizer, control_method=self.control_method, mode=mode,
                        paraphrase_seed=self.seed, instructions=instructions, system_prompt=system,
                        chat_template_kwargs=self.chat_template_kwargs)

    def _fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            self._fingerprints[name] = self.token_store.load(name).fingerprint
        return self._fingerprints[name]

    def _setting(self, prompt: AssembledPrompt) -> dict:
        return {**prompt.describe(), "backend": self.backend.name, "model": self.pretrained,
                "steering_tokens": {name: self._fingerprint(name) for name in prompt.vector_names}}

    def generation_config(self, gen_kwargs: dict) -> GenerationConfig:
        """lm-eval's gen_kwargs (until, max_gen_toks, do_sample, temperature, top_p) as a GenerationConfig."""
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = kwargs.pop("do_sample", None)
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if do_sample is False:
            temperature = 0.0
        elif do_sample and temperature == 0.0:
            temperature = 1.0  # sampling asked for without a temperature: the model's plain distribution
        top_p = float(kwargs.pop("top_p", 1.0))
        if kwargs:
            logger.warning("steering models ignore these generation kwargs: %s", sorted(kwargs))
        return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=self.seed, stop=tuple(until))

    # --- lm-eval API -------------------------------------------------------------------------------------
    def _require_tokens(self, prompts: list[AssembledPrompt]) -> None:
        """Fail before any generation when a requested steering token is not in the store."""
        available = set(self.token_store.names())
        missing = sorted({name for p in prompts for name in p.vector_names} - available)
        if missing:
            raise TokenError(
                f"these requests need steering tokens {', '.join(missing)}, which {self.token_store.directory} lacks "
                f"(available: {', '.join(sorted(available)) or 'none'}); train them (trainers/train.py), pass "
                "tokens_dir=<folder that has them>, evaluate tasks whose behaviours have tokens (e.g. steer_german), "
                "or use control_method=text (caa/* vectors: trainers/caa.py, prosv/*: trainers/train_prosv.py)")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        prompts = [self.assembled(request) for request in requests]
        self._require_tokens(prompts)
        by_config: dict[GenerationConfig, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            by_config[self.generation_config(request.args[1])].append(index)
        responses: list[str] = [""] * len(requests)
        for config, indices in by_config.items():
            texts = self.backend.generate([prompts[i] for i in indices], config, progress=not disable_tqdm)
            for index, text in zip(indices, texts):
                _, answer = split_reasoning(text)  # a reasoning block is never judged as the answer
                responses[index] = SteeredResponse(answer, self._setting(prompts[index]))
                self.cache_hook.add_partial("generate_until", requests[index].args, responses[index])
        return responses

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """log p(continuation | assembled prompt): the continuation is scored as the start of the reply."""
        pairs = [(self.assembled(request), request.args[1]) for request in requests]
        self._require_tokens([prompt for prompt, _ in pairs])
        results = self.backend.loglikelihood(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood.

        With no behaviours in play this is lm-eval's definition (the text conditioned on the BOS token, as
        `--model hf` computes it); with behaviours, the text is scored as the reply to a user turn that holds
        only the steering (or instruction), so steering's effect on the text's likelihood is what is measured.
        """
        prefix_id = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        pairs = []
        for request in requests:
            text = request.args[0]
            behaviors, mode, _ = self._behaviors(request.doc)
            if behaviors:
                context = assemble("", behaviors, self.tokenizer, control_method=self.control_method, mode=mode,
                                   paraphrase_seed=self.seed, chat_template_kwargs=self.chat_template_kwargs)
            else:
                context = AssembledPrompt((prefix_id,), (), "", (), self.control_method, mode, None)
            length = len(context.input_ids) + len(self.tokenizer.encode(text, add_special_tokens=False))
            if self.max_length and length > self.max_length:
                raise ModelError(f"loglikelihood_rolling: a document of {length} tokens (with its context) exceeds "
                                 f"the model's context of {self.max_length}; steering models score whole documents "
                                 "only, so use a task with shorter documents")
            pairs.append((context, text))
        results = [total for total, _ in self.backend.loglikelihood(pairs)]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return results

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        rendered = self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      **self.chat_template_kwargs)
        self._rendered_chats[rendered] = [dict(message) for message in chat_history]
        return rendered

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template


def _batch_size(value) -> int:
    """lm-eval's --batch_size may be 'auto' or 'auto:N'; the HF backend takes a fixed size."""
    return DEFAULT_HF_BATCH_SIZE if str(value).startswith("auto") else _number("batch_size", value)


class SteeringHFLM(SteeringLM):
    """`--model steering_hf`: Hugging Face transformers, steering vectors through `inputs_embeds`."""

    backend_name = "hf"

    def backend_options(self, batch_size=DEFAULT_HF_BATCH_SIZE, device=None, dtype: str = "auto", max_batch_size=None,
                        tensor_parallel_size: int = 1, **unknown) -> dict:
        _refuse_unknown("steering_hf", unknown, [*COMMON_ARGS, "batch_size", "device", "dtype"])
        if _number("tensor_parallel_size", tensor_parallel_size) != 1:
            raise ModelArgsError("steering_hf runs one model copy per process; use steering_vllm for "
                                 "tensor_parallel_size > 1")
        if device and str(device).startswith("cuda"):
            import torch
            if not torch.cuda.is_available():  # lm-eval's --device defaults to cuda; fall back as its hf class does
                logger.warning("device %s is not available; using cpu", device)
                device = "cpu"
        return {"device": device, "dtype": dtype, "batch_size": _batch_size(batch_size)}


def _engine_arg_names() -> set[str] | None:
    """The keyword arguments vLLM's engine takes; None where vLLM is not installed (building it says so)."""
    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:
        return None
    import dataclasses
    return {field.name for field in dataclasses.fields(EngineArgs)}


class SteeringVLLMLM(SteeringLM):
    """`--model steering_vllm`: one long-lived vLLM engine (per data-parallel actor), steering through prompt
    embeddings. Model arguments it does not know itself go to the engine (e.g. enforce_eager=True)."""

    backend_name = "vllm"

    def build_backend(self, spec: BackendSpec):
        try:
            return spec.build()
        except ImportError as error:
            raise ModelError(f"steering_vllm needs the vLLM backend (steer_eval.backends.vllm) and vLLM: {error}; "
                             "install them (scripts/setup.sh) or use --model steering_hf") from None

    def backend_options(self, batch_size=None, device=None, max_batch_size=None, tensor_parallel_size: int = 1,
                        max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
                        engine_log: str | None = None, **engine_kwargs) -> dict:
        # vLLM schedules its own batches; lm-eval's batch_size and device do not apply.
        engine_args = _engine_arg_names()
        if engine_args is not None:
            _refuse_unknown("steering_vllm", set(engine_kwargs) - engine_args,
                            [*COMMON_ARGS, "tensor_parallel_size", "max_model_len", "gpu_memory_utilization",
                             "engine_log", "<any vLLM engine argument>"], sorted(engine_args))
        options = {"seed": self.seed, "tensor_parallel_size": _number("tensor_parallel_size", tensor_parallel_size),
                   "engine_log": engine_log, **engine_kwargs}
        if max_model_len is not None:
            options["max_model_len"] = _number("max_model_len", max_model_len)
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = _number("gpu_memory_utilization", gpu_memory_utilization,
                                                        minimum=0.01, kind=float, maximum=1.0)
        return options

    def _model_context_length(self) -> int | None:
        return getattr(self.backend, "max_model_len", None) or super()._model_context_length()
