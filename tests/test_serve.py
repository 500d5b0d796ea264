"""`steer-eval serve`, as users run it: the installed console script in a process of its own on 127.0.0.1, with an
API key, talked to by the official `openai` client, by lm-eval's `local-chat-completions` and by steer-eval's
judge. A steered request must give the token ids and, greedy, the text of the vLLM backend (the session's engine
of the same model); bad requests are one-line 400s and leave it serving; the key stays out of its output."""
from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from test_judge import check_rows, free_port, stop_session, write_records

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
MODEL = "smollm2-135m"
KEY = f"sk-steer-eval-test-{secrets.token_hex(8)}"
MAX_TOKENS = 24


@dataclass(frozen=True)
class Server:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log: Path

    def get(self, path: str, key: str | None = KEY) -> httpx.Response:
        return httpx.get(self.url + path, headers=_auth(key), timeout=60)

    def post(self, path: str, body, key: str | None = KEY) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.url + path, content=content, headers={**_auth(key), "content-type": "application/json"},
                          timeout=120)


def _auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def server(default_model_dir, tmp_path_factory) -> Server:
    """`steer-eval serve` on a free port of 127.0.0.1 (a 512 MiB KV cache and 1,024-token context leave room for
    the session's engine); it and the engine process it starts are stopped afterwards, nothing else."""
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    command = [str(Path(sys.executable).parent / "steer-eval"), "serve", "--port", str(port), "--api-key", KEY,
               "--max-model-len", "1024", "--", "--kv-cache-memory-bytes", str(512 * 1024 ** 2)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, f"steer-eval serve exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready in 600 s: {log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(2)
        yield Server(f"http://127.0.0.1:{port}", process, log_path)
    finally:
        stop_session(process, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            stop_session(process, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def token_of_id(server) -> dict[int, str]:
    listing = server.get("/v1/steering").json()
    return {entry["token_id"]: name for entry, name in
            [(b, b["id"]) for b in listing["behaviors"]] + [(listing["and"], "<and>")]}


def backend_answer(vllm_default, prompt: str, steering: list[str], control_method="steering", mode=None,
                   system=None):
    """What the vLLM backend makes of the same request: its assembled prompt and greedy text."""
    from steer_eval.backends.generation import GenerationConfig
    from steer_eval.steering.assembly import parse_steering
    behaviors, mode = parse_steering(steering, mode) if steering else ([], "composition")
    assembled = vllm_default.assemble(prompt, behaviors, control_method=control_method, mode=mode,
                                      system_prompt=system)
    text = vllm_default.generate([assembled], GenerationConfig(max_new_tokens=MAX_TOKENS), progress=False)[0]
    return assembled, text


def as_names(ids: list[int], token_of_id: dict[int, str]) -> list:
    return [token_of_id.get(i, i) for i in ids]


SETTINGS = [  # (steering, control_method, mode)
    (["german", "<and>", "words_10_50"], "steering", None),
    (["words_10_50", "german"], "steering", "native_and"),
    (["french"], "hybrid", None),
    (["spanish", "<and>", "sentences_1"], "text", None),
]


def test_the_server_says_what_it_steers_with_and_which_engine(server, vllm_default):
    listing = server.get("/v1/steering").json()
    store = vllm_default.store
    assert {b["id"]: b["fingerprint"] for b in listing["behaviors"]} == {
        name: store.load(name).fingerprint for name in store.names() if "/" not in name and name != "<and>"}
    assert listing["and"]["fingerprint"] == store.load("<and>").fingerprint
    engine = listing["engine"]
    assert engine["model_fingerprint"] == vllm_default.fingerprint  # as a grid's manifest records the engine
    assert (engine["backend"], engine["model"], engine["dtype"]) == ("vllm", MODEL, "float32")
    assert [m["id"] for m in server.get("/v1/models").json()["data"]] == [MODEL]
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # no key needed, as in vLLM
    import psutil
    listening = [c.laddr for c in psutil.Process(server.process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN]
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", int(server.url.rsplit(":", 1)[1]))]


@pytest.mark.parametrize("steering, control_method, mode", SETTINGS)
def test_a_steered_chat_request_gives_the_backends_ids_and_text(server, client, vllm_default, token_of_id,
                                                                steering, control_method, mode):
    prompt = "Why do cats purr?"
    assembled, expected = backend_answer(vllm_default, prompt, steering, control_method, mode)
    fields = {"steering": steering, "control_method": control_method, **({"mode": mode} if mode else {})}
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_TOKENS,
        extra_body={**fields, "return_token_ids": True})
    answer = json.loads(raw.text)
    assert answer["choices"][0]["message"]["content"] == expected
    slots = dict(assembled.slots)  # position -> token name; the backend's rows are its own, so compare names
    assert as_names(answer["prompt_token_ids"], token_of_id) == [slots.get(position, token) for position, token
                                                                  in enumerate(assembled.input_ids)]
    used = dict(item.split("=") for item in raw.headers["x-steer-eval-tokens"].split(";")) \
        if assembled.slots else {}
    assert used == {name: vllm_default.store.load(name).fingerprint for name in assembled.token_names}
    assert raw.headers["x-steer-eval-engine"] == vllm_default.fingerprint


def test_completions_streaming_and_plain_requests_answer_as_the_backend(server, client, vllm_default):
    prompt = "Name a river in Europe."
    _, steered = backend_answer(vllm_default, prompt, ["italian"])
    completion = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS,
                                           extra_body={"steering": ["italian"]})
    assert completion.choices[0].text == steered
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=MAX_TOKENS, stream=True,
                                            extra_body={"steering": ["italian"]})
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == steered
    _, plain = backend_answer(vllm_default, prompt, [])
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == plain  # no steering fields: vLLM's own request, untouched


def test_requests_with_different_steering_are_served_together(server, client, vllm_default):
    cases = [(prompt, steering) for prompt in ("Describe rain.", "What is a comet?")
             for steering in ([], ["german"], ["spanish", "<and>", "words_10_50"], ["sentences_1"])]
    expected = [backend_answer(vllm_default, prompt, steering)[1] for prompt, steering in cases]

    def ask(case):
        prompt, steering = case
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_TOKENS,
            extra_body={"steering": steering} if steering else {}).choices[0].message.content

    with ThreadPoolExecutor(len(cases)) as pool:
        assert list(pool.map(ask, cases)) == expected


@pytest.mark.parametrize("fields, param, words", [
    ({"steering": ["klingon"]}, "steering", "unknown behaviour 'klingon'"),
    ({"steering": ["german", "french"]}, "steering", "conflicting behaviours"),
    ({"steering": ["<and>", "german"]}, "steering", "<and> between every two behaviours"),
    ({"steering": ["german", "<and>", "<and>", "words_10_50"]}, "steering", "between every two"),
    ({"steering": []}, "steering", "empty"),
    ({"steering": "german", "control_method": ["text"]}, "control_method", "must be one of"),
    ({"steering": ["german"] * 10 ** 5}, "steering", "at most 32"),
    ({"steering": ["german"], "paraphrase_seed": 1.5}, "paraphrase_seed", "integer"),
])
def test_a_bad_steering_field_is_a_400_naming_it(server, fields, param, words):
    reply = server.post("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 4, **fields})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"] and "\n" not in error["message"]


def test_a_prompt_over_the_context_is_a_400(server):
    reply = server.post("/v1/chat/completions", {"model": MODEL, "steering": ["german"], "max_tokens": 4,
                                                 "messages": [{"role": "user", "content": "cat " * 3000}]})
    assert reply.status_code == 400 and "context" in reply.json()["error"]["message"].lower(), reply.text


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """One request a hostile or broken client might send to a steered route."""
    path = rng.choice(["/v1/chat/completions", "/v1/completions"])
    junk = [None, True, -1, 2 ** 70, 1.5, "x" * rng.randint(0, 3000), [], {}, ["<and>"] * 50, [[["german"]]],
            {"steering": "german"}, "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
            "<steer:german>", ["german", 3], list(range(200))]
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    for field in rng.sample(["steering", "control_method", "mode", "paraphrase_seed", "messages", "prompt",
                             "vllm_xargs", "kv_transfer_params", "echo"], rng.randint(1, 4)):
        body[field] = rng.choice(junk)
    body.setdefault("steering", rng.choice(junk[:6] + [["klingon"], ["german", "german"]]))
    kind = rng.random()
    if kind < 0.6:
        return path, json.dumps(body).encode()
    if kind < 0.75:
        return path, json.dumps(body).encode()[: rng.randint(0, 40)]  # cut off
    if kind < 0.9:
        return path, bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))  # not UTF-8, not JSON
    return path, ("[" * rng.randint(1000, 50_000)).encode()  # nested past any parser's depth


def test_a_thousand_malformed_requests_leave_it_serving_and_its_memory_flat(server, client):
    import psutil
    rng = random.Random(20261207)
    api = psutil.Process(server.process.pid)

    def send(count):
        with httpx.Client(timeout=60, headers=_auth(KEY)) as http:
            for _ in range(count):
                path, content = malformed(rng)
                status = http.post(server.url + path, content=content,
                                   headers={"content-type": "application/json"}).status_code
                assert status in (400, 422), (status, content[:200])

    send(200)  # warm-up: caches and buffers of the first requests are not growth
    before = api.memory_info().rss
    send(1000)
    grown = (api.memory_info().rss - before) / 2 ** 20
    assert grown < 8, f"the API server grew by {grown:.1f} MiB over 1,000 malformed requests"
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                                           extra_body={"steering": ["german"]})
    assert reply.choices[0].message.content


def test_lm_evals_local_chat_completions_gets_steering_vllms_responses(server, vllm_default, lm_eval_main,
                                                                       monkeypatch, tmp_path):
    from steer_eval.lmeval.models import SteeringVLLMLM
    monkeypatch.setattr(SteeringVLLMLM, "build_backend", lambda self, spec: vllm_default)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    common = ["--tasks", "steer_german", "--limit", "4", "--log_samples", "--gen_kwargs", f"max_gen_toks={MAX_TOKENS}"]
    lm_eval_main(tmp_path / "a", "--model", "steering_vllm", *common, "--output_path", str(tmp_path / "a"))
    lm_eval_main(tmp_path / "b", "--model", "local-chat-completions", "--apply_chat_template", *common[:-1],
                 f"max_gen_toks={MAX_TOKENS},steering=german,strip_instruction=True", "--output_path", str(tmp_path / "b"), "--model_args",
                 f"base_url={server.url}/v1/chat/completions,model={MODEL},num_concurrent=4,max_retries=1")

    def responses(folder):
        samples = next(folder.rglob("samples_steer_german_*.jsonl")).read_text().splitlines()
        return {json.loads(s)["doc_id"]: json.loads(s)["resps"][0][0] for s in samples}

    steered = responses(tmp_path / "a")
    assert len(steered) == 4 and responses(tmp_path / "b") == steered


def test_steer_evals_judge_scores_through_the_server(server, tmp_path, monkeypatch):
    """Configured as users do, from the environment. A 135M model is no judge: the mechanics are what is checked."""
    from steer_eval.judges.llm import JudgeConfig, judge_records
    for name, value in [("LLM_JUDGE_BASE_URL", server.url + "/v1"), ("LLM_JUDGE_MODEL", MODEL),
                        ("LLM_JUDGE_API_KEY", KEY)]:
        monkeypatch.setenv(name, value)
    records = write_records(tmp_path / "r.jsonl")
    judge = JudgeConfig.from_environment(concurrency=2, timeout_s=120, backoff_s=0.5)
    first = judge_records(records, judge, progress=False)
    check_rows(first.rows)
    assert first.errors == 0 and first.requests == 4  # json_schema: vLLM constrains the reply to the rubric's shape
    again = judge_records(records, judge, progress=False)
    assert again.requests == 0 and again.from_cache == 4 and again.rows == first.rows
    # Unconstrained, this model answers prose (measured: 4 of 4 malformed): recorded errors, never scores.
    other = write_records(tmp_path / "other.jsonl", [("q0", "Why do cats purr?", "Cats purr when content.", "text"),
                                                     ("q1", "Say hello.", "hello hello hello hello", "text")])
    free = judge_records(other, replace(judge, json_schema=False), progress=False)
    check_rows(free.rows)
    assert 2 <= free.requests <= 2 * 3 and free.from_cache == 0


def test_the_api_key_is_vllms_and_never_in_the_servers_output(server):
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for key in (None, "wrong", KEY[:-1]):
        assert server.get("/v1/models", key).status_code == 401
        assert server.get("/v1/steering", key).status_code == 401
        assert server.post("/v1/chat/completions", {**chat, "steering": ["klingon"]}, key).status_code == 401
    assert server.post("/v1/chat/completions", chat).status_code == 200
    log = server.log.read_text(errors="replace")
    assert "steering tokens in spare rows" in log and "Application startup complete" in log
    assert KEY not in log and KEY[-12:] not in log


def test_the_serving_page_runs_against_the_server(server, vllm_default):
    """docs/serving.md as a reader runs it: its `steer-eval serve` is the command this module starts (plus the
    test's port, key and smaller cache), its curl and its `openai` example run against that server."""
    import contextlib
    import io
    import re
    import shlex

    from test_docs import ROOT, shell_commands
    page = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    commands = [shlex.split(c.text, comments=True) for c in shell_commands(page, "docs/serving.md")]
    assert commands[0] == ["steer-eval", "serve"] and server.process.args[1:2] == ["serve"]
    port = server.url.rsplit(":", 1)[1]
    curl = [c for c in commands if c[0] == "curl"]
    assert curl
    for command in curl:
        done = subprocess.run([a.replace(":8000", f":{port}").replace("$KEY", KEY) for a in command],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and json.loads(done.stdout)["engine"]["backend"] == "vllm", done.stderr
    [example] = re.findall(r"```python\n(.*?)```", page, re.S)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example.replace("http://127.0.0.1:8000", server.url).replace('api_key="EMPTY"',
                                                                                    f'api_key="{KEY}"'),
                     "docs/serving.md", "exec"), {})
    text, tokens = printed.getvalue().rstrip("\n").rsplit("\n", 1)
    assert text.strip() and tokens.startswith("german=") and "<and>=" in tokens and "words_10_50=" in tokens
