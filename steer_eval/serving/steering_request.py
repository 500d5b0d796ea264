"""Steering chosen per request: read `steering`, `control_method`, `mode` and `paraphrase_seed` from an OpenAI
request body (where the `openai` client's `extra_body` puts them, or inside `vllm_xargs`), check them, and rewrite
the body into a plain one that vLLM's own handlers serve.

The prompt is built by `assemble()`, as for the vLLM backend and `steering_vllm`, and reaches the engine as those
token ids, each slot holding its token's spare-row id:
- chat: the single user turn (after an optional system turn) is assembled and the ids handed to vLLM's chat
  handler in `kv_transfer_params.prompt_token_ids` (vLLM then skips its own template and tokenizer);
- completions: the prompt becomes the ids (the chat template applied, as steer-eval always does).

The served tokenizer also knows each token as the special token `<steer:NAME>`, so text can steer with no client
support: a message containing `<steer:german>` steers from where it stands. Unless the server was started with
--steering-in-text, any such text is refused (a 400 naming it), so untrusted text cannot steer; with a `steering`
field it is refused always (the slots would be ambiguous). Every problem is a `RequestError`: an HTTP 400 with one
line naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steer_eval.errors import UserError, clip, quoted
from steer_eval.scoring.behaviors import resolve
from steer_eval.serving.served_model import ServedSteering, token_text
from steer_eval.steering.assembly import MODES, assemble, parse_steering

FIELDS = ("steering", "control_method", "mode", "paraphrase_seed", "strip_instruction")
SERVED_METHODS = ("steering", "text", "hybrid")  # caa/prosv add vectors inside the model: HF backend only
MAX_STEERING_ITEMS = 32  # more than any compatible combination with <and> between its behaviours needs


class RequestError(UserError):
    """A request the server answers with HTTP 400; `field` is the body field at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Steering:
    behaviors: tuple[str, ...]
    control_method: str
    mode: str
    paraphrase_seed: int
    # The user text ends with the behaviours' written instruction, as steer-eval's lm-eval tasks write it for a
    # model without steering (prompt, blank line, instruction): it is taken off, so the tokens steer the prompt.
    strip_instruction: bool = False


def has_steering_fields(body: dict) -> bool:
    xargs = body.get("vllm_xargs")
    return any(name in body or (isinstance(xargs, dict) and name in xargs) for name in FIELDS)


def read_steering(body: dict) -> Steering | None:
    """Take the steering fields out of `body` (top level or `vllm_xargs`); None when the request is plain."""
    fields = {name: body.pop(name) for name in FIELDS if name in body}
    xargs = body.get("vllm_xargs")
    if isinstance(xargs, dict):
        fields.update({name: xargs.pop(name) for name in FIELDS if name in xargs})
        if not xargs:
            del body["vllm_xargs"]
    if not fields:
        return None
    if "steering" not in fields:
        raise RequestError(f"{', '.join(fields)} given without 'steering'; add 'steering': a list of behaviour ids "
                           "(GET /v1/steering lists them)", next(iter(fields)))
    items = fields["steering"]
    if isinstance(items, str):
        items = items.split()
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise RequestError(f"'steering' must be a list of behaviour ids (strings), got {quoted(items)}", "steering")
    if not items:
        raise RequestError("'steering' is empty; give at least one behaviour id, or leave the field out for a "
                           "plain request", "steering")
    if len(items) > MAX_STEERING_ITEMS:
        raise RequestError(f"'steering' has {len(items)} items; at most {MAX_STEERING_ITEMS}", "steering")
    method = _choice(fields, "control_method", "steering", SERVED_METHODS)
    mode = _choice(fields, "mode", None, MODES)
    seed = fields.get("paraphrase_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RequestError(f"'paraphrase_seed' must be an integer, got {quoted(seed)}", "paraphrase_seed")
    strip = fields.get("strip_instruction", False)
    if not isinstance(strip, bool):
        raise RequestError(f"'strip_instruction' must be true or false, got {quoted(strip)}", "strip_instruction")
    try:
        behaviors, mode = parse_steering(items, mode)
        if len(set(behaviors)) != len(behaviors):
            raise RequestError(f"names a behaviour twice: {clip(' '.join(items), 200)}", "steering")
        resolve(behaviors)  # unknown ids, conflicting behaviours
    except UserError as error:
        raise RequestError(f"'steering': {error}", "steering") from None
    return Steering(tuple(behaviors), method, mode, seed, strip)


def _choice(fields: dict, name: str, default, allowed) -> Any:
    value = fields.get(name, default)
    if value is default:
        return value
    if not isinstance(value, str) or value not in allowed:
        hint = " (caa and prosv need the HF backend: steer-eval generate/infer/grid)" if value in ("caa", "prosv") \
            else ""
        raise RequestError(f"'{name}' must be one of {', '.join(allowed)}, got {quoted(value)}{hint}", name)
    return value


def steer(path: str, body: dict, served: ServedSteering) -> list[str]:
    """Rewrite a chat or completions `body` in place; return the steering tokens it uses (for the provenance
    header). A plain body is checked for steering-token text only."""
    steering = read_steering(body)
    literal = _literal_tokens(body, served)
    if literal and (steering is not None or not served.steering_in_text):
        why = ("a request with 'steering' may not also write steering tokens as text" if steering is not None else
               "this server takes steering only in the 'steering' field (start it with --steering-in-text to "
               "let text steer)")
        raise RequestError(f"the request's text contains {literal[0]!r}, a steering token; {why}", _text_field(path))
    if steering is None:
        return [served.texts[text] for text in literal]
    if path.endswith("/chat/completions"):
        return _steer_chat(body, steering, served)
    return _steer_completion(body, steering, served)


def _text_field(path: str) -> str:
    return "messages" if path.endswith("/chat/completions") else "prompt"


def without_instruction(text: str, behaviors: tuple[str, ...]) -> str:
    """`text` less its last blank line and the written instruction of `behaviors` after it (any paraphrase, joined
    as `join_instructions` joins them), or a RequestError saying the text does not end that way."""
    prompt, blank, written = text.rpartition("\n\n")
    heads = [""]
    for index, behavior in enumerate(resolve(behaviors)):
        joint = " and " if index else ""
        phrasings = [p if index == 0 else p[:1].lower() + p[1:] for p in behavior.instructions]
        heads = [head + joint + p for head in heads for p in phrasings if written.startswith(head + joint + p)]
    if not blank or written not in {head + "." for head in heads}:
        raise RequestError(f"'strip_instruction': the text does not end with a blank line and the written "
                           f"instruction of {', '.join(behaviors)} (as steer-eval's tasks write it)",
                           "strip_instruction")
    return prompt


def _assembled(prompt: str, steering: Steering, served: ServedSteering, system: str | None = None):
    if steering.strip_instruction:
        prompt = without_instruction(prompt, steering.behaviors)
    assembled = assemble(prompt, steering.behaviors, served.backend.tokenizer,
                         control_method=steering.control_method, mode=steering.mode,
                         paraphrase_seed=steering.paraphrase_seed, system_prompt=system,
                         chat_template_kwargs=served.backend.chat_template_kwargs)
    missing = [name for name in assembled.token_names if name not in served.token_ids]
    if missing:
        raise RequestError(f"this server has no steering token for {', '.join(missing)} (GET /v1/steering lists "
                           "what it has)", "steering")
    return assembled


def _served_ids(assembled, served: ServedSteering) -> list[int]:
    ids = list(assembled.input_ids)
    for position, name in assembled.slots:
        ids[position] = served.token_ids[name]
    return ids


def _steer_chat(body: dict, steering: Steering, served: ServedSteering) -> list[str]:
    messages = body.get("messages")
    roles = [m.get("role") for m in messages] if isinstance(messages, list) and all(
        isinstance(m, dict) for m in messages) else None
    if roles not in (["user"], ["system", "user"]) or not all(isinstance(m.get("content"), str) for m in messages):
        raise RequestError("a steered chat request has one user message with text content, after an optional "
                           f"system message (steering follows the user's prompt), got roles {clip(str(roles), 80)}",
                           "messages")
    if body.get("echo"):
        raise RequestError("'echo' repeats the messages as rendered without steering; leave it out of a steered "
                           "request", "echo")
    forwarded = body.get("kv_transfer_params")
    if forwarded is not None and (not isinstance(forwarded, dict) or "prompt_token_ids" in forwarded):
        raise RequestError("a steered request brings its own prompt token ids; leave 'kv_transfer_params' "
                           "without 'prompt_token_ids'", "kv_transfer_params")
    system = messages[0]["content"] if roles[0] == "system" else None
    assembled = _assembled(messages[-1]["content"], steering, served, system)
    # vLLM's chat handler takes pre-tokenised prompts here (its decode-side reuse of prefill ids) and then skips
    # its template and tokenizer: the engine gets exactly the assembled ids, answered in the chat format.
    body["kv_transfer_params"] = {**(forwarded or {}), "prompt_token_ids": _served_ids(assembled, served)}
    return list(assembled.token_names)


def _steer_completion(body: dict, steering: Steering, served: ServedSteering) -> list[str]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("a steered completion request has one text prompt (a string); steer-eval builds its "
                           "token ids", "prompt")
    assembled = _assembled(prompt, steering, served)
    body["prompt"] = _served_ids(assembled, served)
    return list(assembled.token_names)


def _literal_tokens(body: dict, served: ServedSteering) -> list[str]:
    """Steering-token texts (and spare-row ids in a prompt of ids) anywhere in the request's messages or prompt."""
    found, pending = [], [body.get("messages"), body.get("prompt")]
    texts, ids = served.texts, {token_id: token_text(name) for name, token_id in served.token_ids.items()}
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found += [text for text in texts if text in item]
        elif isinstance(item, int) and not isinstance(item, bool) and item in ids:
            found.append(ids[item])
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, dict):
            pending += item.values()
    return list(dict.fromkeys(found))
