"""An LLM judge of response quality, over any OpenAI-compatible chat-completions endpoint.

A verifier says *German*; it cannot say *good German*. The judge reads a record's prompt and response and
answers two AxBench-style scores in a fixed JSON shape, ``{"relevance": r, "fluency": f}`` (rubric
`RUBRIC_VERSION`):

- relevance to the prompt: 0 unrelated to it, 1 partly addresses it, 2 addresses it (a response in another
  language than the prompt is not penalised for that);
- fluency, in whatever language the response is written: 0 broken (word salad, repetition, gibberish),
  1 understandable with errors, 2 fluent;
- combined: the harmonic mean of the two, 0 when either is 0 (AxBench's aggregate).

The request asks for that shape with ``response_format`` json_schema too (off for endpoints that reject it). The
reply is parsed strictly (exactly those two keys, integers 0-2; a single ```json fence is allowed); a malformed
reply is asked again a bounded number of times, then recorded as an error for that item, never a score.

Configured like the reference implementation: LLM_JUDGE_BASE_URL (e.g. http://127.0.0.1:8000/v1),
LLM_JUDGE_MODEL and LLM_JUDGE_API_KEY (optional, read only from the environment and never written anywhere).
Scores are cached in ``cache.jsonl`` keyed by sha256(judge model, rubric version, prompt, response), each line
appended and flushed as its score arrives: an interrupted run loses nothing scored and a rerun asks only for
what is missing. ``scores.jsonl`` beside it holds one line per record, keyed by the record key.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import os
import random
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import httpx
import orjson
from tqdm.auto import tqdm

from steer_eval.errors import UserError
from steer_eval.runs.records import append_records, iter_records, read_rows
from steer_eval.runs.identity import FOLDER_JUDGE, JUDGE_SUFFIX, records_stem

RUBRIC_VERSION = "axbench-relevance-fluency-0-2/1"
ENV_BASE_URL, ENV_MODEL, ENV_API_KEY = "LLM_JUDGE_BASE_URL", "LLM_JUDGE_MODEL", "LLM_JUDGE_API_KEY"
CACHE_FILE, SCORES_FILE = "cache.jsonl", "scores.jsonl"
SCALES = ("relevance", "fluency")
MAX_BACKOFF_S = 30.0
RETRY_TEMPERATURE = 0.7  # a greedy judge would repeat the same malformed reply word for word

SYSTEM_PROMPT = """You rate one response of an AI assistant to a user's prompt, on two scales.
relevance: 0 = unrelated to the prompt, 1 = partly addresses the prompt, 2 = addresses the prompt.
A response written in another language than the prompt is not less relevant for that.
fluency, judged in whatever language the response is written: 0 = broken (word salad, repetition loops, \
gibberish), 1 = understandable but with errors, 2 = fluent.
Reply with only this JSON object and nothing else: {"relevance": <0, 1 or 2>, "fluency": <0, 1 or 2>}"""

RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "rubric", "strict": True, "schema": {
    "type": "object", "properties": {scale: {"type": "integer", "enum": [0, 1, 2]} for scale in SCALES},
    "required": list(SCALES), "additionalProperties": False}}}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


class JudgeError(UserError):
    """The judge is not configured, cannot be reached, or keeps failing."""


class MalformedReply(ValueError):
    """A judge reply that is not the rubric's JSON object; `reply` is the server's text, neither masked nor cut."""

    def __init__(self, problem: str, reply: str):
        super().__init__(problem)
        self.reply = reply


class Redactor:
    r"""Masks a secret (the API key) in text, in every form a server may echo it: raw (so also after "Bearer "),
    JSON-escaped (``\/``, ``\"``, ``\\``, ``\uXXXX``), percent-encoded (``quote``, ``quote_plus``), HTML-escaped,
    any mix of these character by character, hex digits in either case; and base64, standard or URL-safe (as in
    ``Authorization: Basic base64(user:key)``): for each of the 3 byte alignments, the characters that the
    secret's bytes alone determine, where they are at least 4.

    Mask before cutting a text: a cut first can leave a part of the secret that no longer matches. For the same
    reason a server that echoes only a part of the secret is not recognised.
    """

    def __init__(self, secret: str | None):
        forms = sorted({secret, *_base64_cores(secret)}, key=len, reverse=True) if secret else []
        self.pattern = re.compile("|".join("".join(map(_char_pattern, form)) for form in forms)) if forms else None

    def __call__(self, text: str) -> str:
        return self.pattern.sub(f"<{ENV_API_KEY}>", text) if self.pattern else text


def _char_pattern(char: str) -> str:
    """A regular expression for one character in any of the forms a JSON, URL or HTML encoder writes it."""
    utf16 = char.encode("utf-16-be")
    # "\/": JSON's optional escape of "/" (PHP writes it); "+": quote_plus's space
    literals = {char, json.dumps(char)[1:-1], html.escape(char), {"/": "\\/", " ": "+"}.get(char, char)}
    return "(?:" + "|".join([*map(re.escape, sorted(literals, key=len, reverse=True)),
                             "".join(rf"\\u(?i:{utf16[i:i + 2].hex()})" for i in range(0, len(utf16), 2)),
                             "".join(f"%(?i:{byte:02x})" for byte in char.encode())]) + ")"


def _base64_cores(secret: str) -> list[str]:
    """The base64 characters that the secret's bytes alone determine, standard and URL-safe, for the secret at byte
    offset 0, 1 or 2 of a 3-byte group: a character holds 6 bits, so from ceil(8 * offset / 6) to
    floor(8 * (offset + length) / 6)."""
    data = secret.encode()
    cores = [encode(bytes(offset) + data).decode()[-(-8 * offset // 6):8 * (offset + len(data)) // 6]
             for encode in (base64.b64encode, base64.urlsafe_b64encode) for offset in range(3)]
    return [core for core in cores if len(core) >= 4]  # shorter ones would mask ordinary words


def combined(relevance: int, fluency: int) -> float:
    """Harmonic mean of the two scores; 0 when either is 0."""
    return 0.0 if relevance == 0 or fluency == 0 else 2 * relevance * fluency / (relevance + fluency)


def parse_reply(content: str) -> tuple[int, int]:
    """(relevance, fluency) from the judge's reply text; MalformedReply unless it is exactly the rubric's shape."""
    text = content.strip()
    fenced = _FENCE.fullmatch(text)
    try:
        reply = json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        raise MalformedReply("not JSON", content) from None
    if not isinstance(reply, dict) or set(reply) != set(SCALES):
        raise MalformedReply("not an object with exactly relevance and fluency", content)
    scores = tuple(reply[scale] for scale in SCALES)
    if any(type(score) is not int or score not in (0, 1, 2) for score in scores):
        raise MalformedReply("scores must be the integers 0, 1 or 2", content)
    return scores


def cache_key(judge_model: str, prompt: str, response: str) -> str:
    return hashlib.sha256(orjson.dumps([judge_model, RUBRIC_VERSION, prompt, response])).hexdigest()


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # ends before /chat/completions, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 8
    timeout_s: float = 60.0
    attempts: int = 5  # per HTTP request, on 429, 5xx, timeouts and connection errors
    malformed_attempts: int = 3  # per item, on replies that are not the rubric's JSON
    backoff_s: float = 0.5  # first back-off; doubles per retry, with jitter, up to MAX_BACKOFF_S
    max_tokens: int = 64
    json_schema: bool = True  # constrain the reply with response_format json_schema (OpenAI, vLLM, SGLang...)

    @classmethod
    def from_environment(cls, base_url: str | None = None, model: str | None = None, **settings) -> "JudgeConfig":
        """Flags override LLM_JUDGE_BASE_URL and LLM_JUDGE_MODEL; the key comes only from LLM_JUDGE_API_KEY."""
        base_url, model = base_url or os.environ.get(ENV_BASE_URL), model or os.environ.get(ENV_MODEL)
        api_key = os.environ.get(ENV_API_KEY) or None
        missing = [name for name, value in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not value]
        if missing:
            raise JudgeError(f"no judge configured: set {' and '.join(missing)} (or give --base-url / --model), "
                             f"and {ENV_API_KEY} if the endpoint needs a key")
        if not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"the judge base URL {Redactor(api_key)(base_url)!r} is not http(s); set "
                             f"{ENV_BASE_URL}, e.g. http://127.0.0.1:8000/v1")
        return cls(base_url.rstrip("/"), model, api_key, **settings)

    @property
    def endpoint(self) -> str:
        """The chat-completions URL without user:password (those go in an Authorization header, so neither the
        messages nor httpx's request log ever show them)."""
        return str(httpx.URL(f"{self.base_url}/chat/completions").copy_with(username=None, password=None))

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        url = httpx.URL(self.base_url)
        return (url.username, url.password) if url.username or url.password else None


class _RejectedItem(Exception):
    """The endpoint refused this one request (HTTP 400, 413, 422...): an error for the item, not the run."""


class _Judge:
    """Asks the endpoint for one item's scores, with retries; counts the HTTP requests it makes."""

    def __init__(self, config: JudgeConfig, client: httpx.AsyncClient):
        self.config, self.client, self.requests = config, client, 0
        self.redact = Redactor(config.api_key)

    async def scores(self, prompt: str, response: str) -> tuple[int, int] | str:
        """(relevance, fluency), or the error recorded for this item."""
        problem = ""
        for attempt in range(self.config.malformed_attempts):
            body = {"model": self.config.model, "max_tokens": self.config.max_tokens,
                    "temperature": 0.0 if attempt == 0 else RETRY_TEMPERATURE,
                    "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                 {"role": "user", "content": f"[PROMPT]\n{prompt}\n[END PROMPT]\n\n"
                                                             f"[RESPONSE]\n{response}\n[END RESPONSE]"}]}
            if self.config.json_schema:
                body["response_format"] = RESPONSE_FORMAT
            try:
                return parse_reply(_content(await self._post(body)))
            except MalformedReply as error:
                problem = f"{error}: {self.redact(error.reply)[:80]!r}"
            except _RejectedItem as error:
                return str(error)
        return f"malformed reply ({self.config.malformed_attempts} attempts): {problem}"

    async def _post(self, body: dict) -> httpx.Response:
        url, attempts = self.config.endpoint, self.config.attempts
        for attempt in range(1, attempts + 1):
            self.requests += 1
            retry_after = None
            try:
                reply = await self.client.post(url, json=body)
            except httpx.TransportError as error:
                failure = error
            else:
                if reply.status_code == 200:
                    return reply
                failure, retry_after = reply, reply.headers.get("retry-after")
                if reply.status_code in (401, 403):
                    raise self._error(f"the judge at {url} refused the request (HTTP {reply.status_code}): "
                                      f"check {ENV_API_KEY}")
                if reply.status_code == 404:
                    raise self._error(f"the judge at {url} answered HTTP 404 ({self._snippet(reply)}): check "
                                      f"{ENV_BASE_URL} (usually ends in /v1) and the model {self.config.model!r} "
                                      f"({ENV_MODEL})")
                if reply.status_code != 429 and reply.status_code < 500:
                    raise _RejectedItem(f"HTTP {reply.status_code}: {self._snippet(reply)}")
            if attempt < attempts:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        if isinstance(failure, httpx.TimeoutException):
            raise self._error(f"the judge at {url} did not answer within {self.config.timeout_s:g} s "
                              f"({attempts} attempts); raise --timeout or lower --concurrency")
        if isinstance(failure, httpx.TransportError):
            raise self._error(
                f"cannot reach the judge at {url} ({type(failure).__name__}: {failure}; {attempts} attempts): "
                f"start it, or set {ENV_BASE_URL} (or --base-url), {ENV_MODEL} and {ENV_API_KEY} for the judge "
                "you mean")
        raise self._error(f"the judge at {url} answered HTTP {failure.status_code} to {attempts} attempts "
                          f"({self._snippet(failure)}); try again later or fix the server")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        ceiling = min(MAX_BACKOFF_S, self.config.backoff_s * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)  # jitter: concurrent requests do not retry in step
        try:
            return max(delay, min(MAX_BACKOFF_S, float(retry_after)))
        except (TypeError, ValueError):
            return delay

    def _snippet(self, reply: httpx.Response) -> str:
        return " ".join(self.redact(reply.text).split())[:200] or "empty body"

    def _error(self, message: str) -> JudgeError:
        return JudgeError(self.redact(message))  # the URL may hold the key, as userinfo


def _content(reply: httpx.Response) -> str:
    try:
        content = reply.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise MalformedReply("not a chat-completions answer", reply.text) from None
    if not isinstance(content, str):
        raise MalformedReply("no message content", reply.text)
    return content


def judge_dir(source: str | Path) -> Path:
    """Where a records source's judge files go: <folder>/judge for a folder, <name>.judge beside a file (sidecars
    of the records' run: --restart moves them aside with the records)."""
    source = Path(source)
    if source.is_dir():
        return source / FOLDER_JUDGE
    return source.with_name(records_stem(source) + JUDGE_SUFFIX)


def _read_cache(path: Path) -> dict[str, tuple[int, int]]:
    """cache key -> (relevance, fluency), by the records' crash rule (`read_rows`); a row that is not a score is an
    error naming the file (never a crash)."""
    cached = {}
    for number, row in enumerate(read_rows(path), start=1):
        scores = (row.get("relevance"), row.get("fluency"))
        if not isinstance(row.get("key"), str) or any(type(s) is not int or s not in (0, 1, 2) for s in scores):
            raise JudgeError(f"{path}: row {number} is not a judge score; move the file away and judge again")
        cached[row["key"]] = scores
    return cached


@dataclass
class JudgeResult:
    scores_path: Path
    cache_path: Path
    rows: list[dict]  # one per record, as written to scores.jsonl
    requests: int  # HTTP requests this run made
    from_cache: int  # distinct (prompt, response) pairs already scored by an earlier run

    @property
    def errors(self) -> int:
        return sum("error" in row for row in self.rows)


def judge_records(source: str | Path, config: JudgeConfig, limit: int | None = None,
                  progress: bool = True) -> JudgeResult:
    """Score every record of a records source (file, folder or .tar.gz); write cache.jsonl and scores.jsonl into
    its judge_dir."""
    folder = judge_dir(source)
    cache_path = folder / CACHE_FILE
    cached = _read_cache(cache_path)
    rows, missing = [], {}
    for record in islice(iter_records(source), limit):
        key = cache_key(config.model, record.request.prompt, record.response)
        rows.append({"key": record.key, "run": record.run, "prompt_id": record.prompt_id,
                     "control_method": record.control_method, "mode": record.mode,
                     "behaviors": list(record.behaviors), "cache_key": key})
        if key not in cached:
            missing[key] = (record.request.prompt, record.response)
    if not rows:
        raise JudgeError(f"no records in {source} (give a JSONL file, a folder of them or a .tar.gz)")
    from_cache = len({row["cache_key"] for row in rows} - set(missing))
    errors: dict[str, str] = {}
    try:
        requests = asyncio.run(_judge_missing(config, missing, cached, errors, cache_path, progress))
    except JudgeError as error:
        kept = len({row["cache_key"] for row in rows if row["cache_key"] in cached})
        raise JudgeError(f"{error}; {kept} scores are kept in {cache_path} and the same command continues "
                         "from them" if kept else str(error)) from None
    for row in rows:
        key = row.pop("cache_key")
        row.update(judge_model=config.model, rubric_version=RUBRIC_VERSION)
        if key in cached:
            relevance, fluency = cached[key]
            row.update(relevance=relevance, fluency=fluency, combined=combined(relevance, fluency))
        else:
            row["error"] = errors[key]
    scores_path = folder / SCORES_FILE
    partial = scores_path.with_name(f".{SCORES_FILE}.partial")
    folder.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    os.replace(partial, scores_path)
    return JudgeResult(scores_path, cache_path, rows, requests, from_cache)


async def _judge_missing(config: JudgeConfig, missing: dict[str, tuple[str, str]], cached: dict,
                         errors: dict[str, str], cache_path: Path, progress: bool) -> int:
    """Score the missing items with `concurrency` workers; each score is appended to the cache as it arrives."""
    # bytes: httpx encodes a str header as ASCII, and would fail on a key with a non-ASCII character
    headers = {"Authorization": f"Bearer {config.api_key}".encode()} if config.api_key else {}
    limits = httpx.Limits(max_connections=config.concurrency)
    items = iter(missing.items())
    async with httpx.AsyncClient(headers=headers, timeout=config.timeout_s, limits=limits,
                                 auth=config.basic_auth) as client:
        judge = _Judge(config, client)
        with tqdm(total=len(missing), desc="judging", unit="response", disable=not progress) as bar:
            async def work():
                for key, (prompt, response) in items:
                    scores = await judge.scores(prompt, response)
                    if isinstance(scores, str):
                        errors[key] = scores
                        bar.set_postfix(errors=len(errors))
                    else:
                        append_records(cache_path, [{"key": key, "judge_model": config.model,
                                                     "rubric_version": RUBRIC_VERSION, "relevance": scores[0],
                                                     "fluency": scores[1]}])
                        cached[key] = scores
                    bar.update()

            workers = [asyncio.create_task(work()) for _ in range(min(config.concurrency, len(missing)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    return judge.requests


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per control method: records scored, errors, and mean relevance, fluency and combined score."""
    groups: dict[str, dict] = {}
    for row in rows:
        group = groups.setdefault(row["control_method"], {"n": 0, "errors": 0, "sums": dict.fromkeys(
            (*SCALES, "combined"), 0.0)})
        if "error" in row:
            group["errors"] += 1
            continue
        group["n"] += 1
        for name in group["sums"]:
            group["sums"][name] += row[name]
    return {method: {"n": g["n"], "errors": g["errors"],
                     **{name: total / g["n"] if g["n"] else None for name, total in g["sums"].items()}}
            for method, g in sorted(groups.items())}
