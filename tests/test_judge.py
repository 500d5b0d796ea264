"""The LLM judge against real HTTP: a scripted server on 127.0.0.1 (429s, 500s, malformed and slow replies). Against
a real model server (`steer-eval serve`, vLLM's own server app): tests/test_serve.py."""
import base64
import html
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest

from steer_eval.cli.main import main
from steer_eval.judges.llm import (CACHE_FILE, RUBRIC_VERSION, JudgeConfig, JudgeError, MalformedReply, Redactor,
                              combined, judge_dir, judge_records, parse_reply, summarize)
from steer_eval.runs.records import Record, Request, append_records, read_rows

FAKE_KEY = "sk-FAKE-7f3a9c-NEVER-PRINT-ME"
RECORDS = [("p0", "What is the capital of France?", "The capital of France is Paris.", "steering"),
           ("p1", "Name a primary colour.", "Blau ist eine Primärfarbe.", "steering"),
           ("p2", "Describe the sea.", "sea sea sea sea sea sea", "text"),
           ("p3", "Give me a tip for cooking.", "Taste as you cook and season at the end.", "text")]


def write_records(path, rows=RECORDS):
    append_records(path, [Record(Request(pid, prompt, ("german",), method), response, {"german": True}, {}, {})
                          for pid, prompt, response, method in rows])
    return path


def completion(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


def rubric_answer(body: dict):
    """A well-behaved judge: fluency 0 for a repetition loop, 2 otherwise; relevance 2."""
    fluency = 0 if "sea sea sea" in body["messages"][1]["content"] else 2
    return 200, completion(json.dumps({"relevance": 2, "fluency": fluency})), 0.0


class Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops connections of a burst of 8 (the judge's concurrency): 1 s resends


class ScriptedJudge:
    """A real HTTP server; answer(number, body, headers) -> (status, JSON-able or str body, delay s[, headers])."""

    def __init__(self, answer=lambda number, body, headers: rubric_answer(body)):
        self.answer, self.requests, self.stop, self.lock = answer, [], threading.Event(), threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                    number = len(judge.requests)
                status, payload, delay, *extra = judge.answer(number, body, dict(self.headers))
                judge.stop.wait(delay)
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                try:
                    self.send_response(status)
                    for name, value in (extra[0] if extra else {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args):
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(answer=None):
        servers.append(ScriptedJudge(answer) if answer else ScriptedJudge())
        return servers[-1]
    yield start
    for server in servers:
        server.close()


def config(base_url, model="judge-model", **settings):
    return JudgeConfig(base_url, model, **{"backoff_s": 0.01, "timeout_s": 5.0, **settings})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- rubric -----------------------------------------------------------------------------------------------------

def test_combined_is_the_harmonic_mean_and_zero_when_either_is_zero():
    assert combined(2, 2) == 2 and combined(1, 1) == 1
    assert combined(1, 2) == pytest.approx(4 / 3)
    assert combined(0, 2) == 0 and combined(2, 0) == 0


@pytest.mark.parametrize("reply, expected", [
    ('{"relevance": 2, "fluency": 1}', (2, 1)),
    (' \n```json\n{"fluency": 0, "relevance": 1}\n```\n', (1, 0)),
    ('{"relevance": 2, "fluency": 1, "reason": "fine"}', None),
    ('{"relevance": 3, "fluency": 1}', None),
    ('{"relevance": true, "fluency": 1}', None),
    ('{"relevance": 2.0, "fluency": 1}', None),
    ('{"relevance": "2", "fluency": 1}', None),
    ('Relevance: 2, fluency: 1', None),
    ('{"relevance": 2, "fluency": 1} I hope this helps', None),
    ('[2, 1]', None),
])
def test_replies_are_parsed_strictly(reply, expected):
    if expected is None:
        with pytest.raises(MalformedReply):
            parse_reply(reply)
    else:
        assert parse_reply(reply) == expected


def test_the_judge_needs_a_base_url_and_a_model(monkeypatch):
    for name in ("LLM_JUDGE_BASE_URL", "LLM_JUDGE_MODEL", "LLM_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JudgeError, match="set LLM_JUDGE_BASE_URL and LLM_JUDGE_MODEL"):
        JudgeConfig.from_environment()
    with pytest.raises(JudgeError, match="not http"):
        JudgeConfig.from_environment("127.0.0.1:8000/v1", "m")
    monkeypatch.setenv("LLM_JUDGE_BASE_URL", "http://env:1/v1/")
    monkeypatch.setenv("LLM_JUDGE_MODEL", "env-model")
    assert JudgeConfig.from_environment().endpoint == "http://env:1/v1/chat/completions"
    assert JudgeConfig.from_environment("http://flag:2/v1", "flag-model").model == "flag-model"


# --- against a scripted server ----------------------------------------------------------------------------------

def test_every_record_is_scored_and_a_rerun_makes_no_request(tmp_path, serve):
    duplicate = ("p4", *RECORDS[0][1:3], "hybrid")  # same prompt and response as p0: judged once
    records = write_records(tmp_path / "records.jsonl", [*RECORDS, duplicate])
    server = serve()
    result = judge_records(records, config(server.base_url), progress=False)
    assert len(server.requests) == result.requests == 4 and result.errors == 0
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "judge-model"
    assert request["body"]["response_format"]["json_schema"]["schema"]["required"] == ["relevance", "fluency"]
    assert result.scores_path == tmp_path / "records.judge" / "scores.jsonl"
    rows = {row["prompt_id"]: row for row in read_rows(result.scores_path)}
    assert rows["p2"]["fluency"] == 0 and rows["p2"]["combined"] == 0
    assert rows["p0"] == {**rows["p4"], "key": rows["p0"]["key"], "prompt_id": "p0", "control_method": "steering"}
    assert rows["p0"]["relevance"] == 2 and rows["p0"]["combined"] == 2.0
    assert rows["p0"]["rubric_version"] == RUBRIC_VERSION and rows["p0"]["judge_model"] == "judge-model"
    assert summarize(result.rows)["text"] == {"n": 2, "errors": 0, "relevance": 2.0, "fluency": 1.0, "combined": 1.0}

    again = judge_records(records, config(server.base_url), progress=False)
    assert len(server.requests) == 4 and again.requests == 0 and again.from_cache == 4
    assert again.rows == result.rows
    other_judge = judge_records(records, config(server.base_url, model="another-judge"), limit=2, progress=False)
    assert other_judge.requests == 2  # the cache is keyed by the judge model too


def test_a_folder_of_records_is_judged_into_a_subfolder_its_readers_skip(tmp_path, serve):
    write_records(tmp_path / "grid" / "records.jsonl")
    result = judge_records(tmp_path / "grid", config(serve().base_url), progress=False)
    assert judge_dir(tmp_path / "grid") == result.scores_path.parent == tmp_path / "grid" / "judge"
    assert main(["analyze", str(tmp_path / "grid"), "--json"]) == 0


def test_429_and_timeouts_are_retried_with_back_off(tmp_path, serve):
    def answer(number, body, headers):
        if number <= 2:
            return 429, {"error": "slow down"}, 0.0, {"Retry-After": "0"}
        if number == 3:
            return rubric_answer(body)[:2] + (2.0,)  # longer than the client waits
        return rubric_answer(body)
    server = serve(answer)
    result = judge_records(write_records(tmp_path / "r.jsonl"), config(server.base_url, concurrency=1, timeout_s=0.5),
                           progress=False)
    assert result.errors == 0 and len(server.requests) == result.requests == 4 + 3


def test_a_persistent_500_names_the_status_and_keeps_what_was_scored(tmp_path, serve):
    records = write_records(tmp_path / "r.jsonl")
    broken = serve(lambda number, body, headers: rubric_answer(body) if number <= 2 else (500, "engine died", 0.0))
    with pytest.raises(JudgeError, match=r"answered HTTP 500 to 3 attempts \(engine died\).*2 scores are kept"):
        judge_records(records, config(broken.base_url, concurrency=1, attempts=3), progress=False)
    assert len(broken.requests) == 2 + 3
    assert len(list(read_rows(judge_dir(records) / CACHE_FILE))) == 2
    fixed = serve()
    result = judge_records(records, config(fixed.base_url), progress=False)
    assert len(fixed.requests) == 2 and result.from_cache == 2 and result.errors == 0


def test_a_slow_judge_is_one_clear_error(tmp_path, serve):
    slow = serve(lambda number, body, headers: rubric_answer(body)[:2] + (3.0,))
    started = time.monotonic()
    with pytest.raises(JudgeError, match="did not answer within 0.2 s .2 attempts.; raise --timeout"):
        judge_records(write_records(tmp_path / "r.jsonl"), config(slow.base_url, timeout_s=0.2, attempts=2),
                      progress=False)
    assert time.monotonic() - started < 2.5


def test_malformed_replies_are_counted_errors_never_scores(tmp_path, serve):
    def answer(number, body, headers):
        prompt = body["messages"][1]["content"]
        if "capital" in prompt:
            return 200, completion("I would rate this response highly."), 0.0
        if "colour" in prompt:
            return 200, "<html>not json</html>", 0.0
        return rubric_answer(body)
    server = serve(answer)
    records = write_records(tmp_path / "r.jsonl")
    result = judge_records(records, config(server.base_url, malformed_attempts=3), progress=False)
    rows = {row["prompt_id"]: row for row in result.rows}
    assert result.errors == 2 and "relevance" not in rows["p0"] and "relevance" not in rows["p1"]
    assert rows["p0"]["error"].startswith("malformed reply (3 attempts): not JSON: 'I would rate")
    assert "not a chat-completions answer" in rows["p1"]["error"]
    assert len(server.requests) == 2 + 2 * 3
    temperatures = [request["body"]["temperature"] for request in server.requests
                    if "capital" in request["body"]["messages"][1]["content"]]
    assert temperatures[0] == 0.0 and all(t > 0 for t in temperatures[1:])
    assert summarize(result.rows)["steering"] == {"n": 0, "errors": 2, "relevance": None, "fluency": None,
                                                  "combined": None}
    again = judge_records(records, config(server.base_url, malformed_attempts=1), progress=False)
    assert again.requests == 2 and again.from_cache == 2  # errors are not cached: a rerun asks for them again


def test_a_request_the_endpoint_rejects_is_an_error_for_that_item_only(tmp_path, serve):
    def answer(number, body, headers):
        if "colour" in body["messages"][1]["content"]:
            return 400, {"error": {"message": "prompt too long"}}, 0.0
        return rubric_answer(body)
    result = judge_records(write_records(tmp_path / "r.jsonl"), config(serve(answer).base_url), progress=False)
    assert result.errors == 1 and [row["error"] for row in result.rows if "error" in row] == [
        'HTTP 400: {"error": {"message": "prompt too long"}}']


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["kill-9", "ctrl-c", "term"])
def test_scores_survive_a_kill_and_the_rerun_asks_only_for_the_rest(tmp_path, serve, stop):
    records = write_records(tmp_path / "r.jsonl")
    hanging = serve(lambda number, body, headers: rubric_answer(body)[:2] + (0.0 if number <= 2 else 60.0,))
    env = {**os.environ, "LLM_JUDGE_BASE_URL": hanging.base_url, "LLM_JUDGE_MODEL": "judge-model"}
    # Ctrl-C reaches a foreground process; a parent that ignores SIGINT (a shell's background job, as CI may
    # run) would pass the ignoring on, so the child gets the default disposition back, as at a terminal.
    process = subprocess.Popen([sys.executable, "-m", "steer_eval.cli", "judge", str(records), "--concurrency", "1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while len(hanging.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hanging.requests) == 3  # two answered, the third hangs
    finally:
        process.send_signal(stop)
        returncode = process.wait(30)
    assert returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 130)  # Ctrl-C, SIGTERM: "interrupted"
    assert len(list(read_rows(judge_dir(records) / CACHE_FILE))) == 2
    fixed = serve()
    result = judge_records(records, config(fixed.base_url), progress=False)
    assert len(fixed.requests) == 2 and result.from_cache == 2 and result.errors == 0


def test_the_api_key_is_sent_but_never_written_or_printed(tmp_path, serve, monkeypatch, capsys, caplog):
    monkeypatch.setenv("LLM_JUDGE_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every request at INFO and DEBUG
    caplog.set_level(logging.DEBUG, logger="httpx")  # even after vLLM's logging setup quieted it in this process
    messages = []

    def echo(status):  # a server that puts the key it was sent into everything it answers
        return lambda number, body, headers: (status, completion(f"key {headers['Authorization']}") if status == 200
                                              else f"bad key {headers['Authorization']}", 0.0)
    for status in (200, 400, 401, 404, 500):
        server = serve(echo(status))
        settings = {"backoff_s": 0.01, "attempts": 2, "malformed_attempts": 1}
        records = write_records(tmp_path / f"r{status}.jsonl")
        try:
            judge_records(records, JudgeConfig.from_environment(server.base_url, "m", **settings), progress=True)
        except JudgeError as error:
            messages.append(str(error))
        assert server.requests[0]["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"
    try:
        judge_records(records, JudgeConfig.from_environment(f"http://127.0.0.1:{free_port()}/v1", "m", **settings))
    except JudgeError as error:
        messages.append(str(error))
    assert len(messages) == 4
    assert all("<LLM_JUDGE_API_KEY>" in m for m in messages if "HTTP 404" in m or "HTTP 500" in m)
    assert "<LLM_JUDGE_API_KEY>" in (tmp_path / "r200.judge" / "scores.jsonl").read_text()
    assert main(["judge", str(records), "--base-url", serve(echo(401)).base_url, "--model", "m"]) == 2
    captured = capsys.readouterr()
    assert "HTTP 401" in captured.err and "LLM_JUDGE_API_KEY" in captured.err
    produced = [*messages, captured.out, captured.err, caplog.text, repr(JudgeConfig.from_environment("http://x", "m"))]
    produced += [path.read_text() for path in tmp_path.rglob("*") if path.is_file()]
    assert not [text for text in produced if FAKE_KEY in text or "FAKE-7f3a9c" in text]


# --- the key in every form a server may echo it ------------------------------------------------------------------

KEYS = {"plain": "sk-plain0123456789abcdefXYZ", "slash-plus-equals": "SECRET/XYZ+123==",
        "quote-backslash": 'SECRET"quoted\\back/slash', "non-ascii": "clé-secrète/été+=42"}
MASK = "<LLM_JUDGE_API_KEY>"


def echoes(key: str) -> dict[str, str]:
    """The key as a server may echo it: in JSON, in a URL, in HTML, in an Authorization header."""
    escaped, percent, basic = json.dumps(key)[1:-1], quote(key, safe=""), f"user:{key}".encode()
    return {"raw": key, "bearer": f"Bearer {key}", "json": escaped, "json-slash": escaped.replace("/", "\\/"),
            "json-utf8": json.dumps(key, ensure_ascii=False)[1:-1],
            "json-uXXXX": "".join(c if c.isascii() and c.isalnum() else f"\\u{ord(c):04X}" for c in key),
            "quote": percent, "quote-lower-hex": re.sub("%..", lambda m: m[0].lower(), percent),
            "quote_plus": quote_plus(key), "html": html.escape(key),
            "basic": f"Basic {base64.b64encode(basic).decode()}",
            "basic-urlsafe": base64.urlsafe_b64encode(basic).decode(), "base64": base64.b64encode(key.encode()).decode(),
            "base64-at-1": base64.b64encode(b"x" + key.encode()).decode()}


def json_unescaped(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5 else m[1], text)


def leaks(key: str, text: str) -> list[str]:
    """What a text gives away of the key: its first 4 characters, in the text decoded as any of `echoes` does; or
    its first 3 bytes, base64-decoded from any run of base64 characters at any alignment."""
    views = {text, unquote(text), unquote_plus(text), html.unescape(text), json_unescaped(text)}
    found = [view for view in views if key[:4] in view]
    for run in (run for view in views for run in re.findall(r"[A-Za-z0-9+/_-]{4,}", view)):
        for shift in range(4):
            chunk = run[shift:].translate(str.maketrans("-_", "+/"))
            if key.encode()[:3] in base64.b64decode(chunk[:len(chunk) // 4 * 4]):
                found.append(f"base64 {run}")
    return found


def straddling(echo: str, cut: int, befores=None) -> list[str]:
    """Server texts that put the echo across a cut after `cut` characters, with `befores` of its characters (by
    default 1, 2... all of them) before the cut."""
    return ["~" * (cut - before) + echo + "~" * 8 for before in befores or range(1, len(echo) + 1)]


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS)
def test_the_redactor_masks_every_form_of_the_key_before_any_cut(key):
    redact = Redactor(key)
    for name, echo in echoes(key).items():
        assert not leaks(key, redact(echo)), name
        for cut in (80, 200):
            for text in straddling(echo, cut):
                assert not leaks(key, redact(text)[:cut]), (name, text)
    ordinary = "a reply without the key: {\"error\": \"Not Found\"} %2F \\u00e9 &quot; dXNlcjpwYXNz é/+="
    assert redact(ordinary) == ordinary and Redactor(None)(ordinary) == ordinary
    assert redact(f"Bearer {key}") == f"Bearer {MASK}" and redact(json.dumps(key)) == f'"{MASK}"'


def test_the_redactor_masks_base64_only_where_the_key_alone_decides_it():
    basic = base64.b64encode(b"user:SECRET/XYZ+123").decode()  # dXNlcjpTRUNSRVQvWFlaKzEyMw==
    assert Redactor("SECRET/XYZ+123")(f"Basic {basic}") == f"Basic dXNlcjp{MASK}w=="  # p, w: bits of the key and others
    assert Redactor("abc")("YWJj abc") == f"{MASK} {MASK}" and Redactor("ab")("YWI= ab") == f"YWI= {MASK}"


SURFACES = {  # how a server's text reaches the user, and after how many of its characters it is cut there
    "not-a-chat-answer": (lambda text: (200, text), 80),
    "malformed-content": (lambda text: (200, completion(text)), 80),
    "http-400": (lambda text: (400, text), 200),
    "http-404": (lambda text: (404, text), 200),
    "http-503": (lambda text: (503, text), 200),
}


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS)
def test_a_server_echoing_the_key_never_gets_it_into_files_messages_or_logs(tmp_path, serve, key, surface, capsys,
                                                                            caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="httpx")  # even after vLLM's logging setup quieted it in this process
    answer, cut = SURFACES[surface]
    stops = surface in ("http-404", "http-503")  # the run stops at the first such reply: one run per text
    texts = [text for echo in echoes(key).values()
             for text in straddling(echo, cut, [len(echo) // 2] if stops else [4, len(echo) // 2, len(echo) - 1])]

    def echo(number, body, headers):
        return *answer(texts[int(re.search(r"case (\d+)", body["messages"][1]["content"])[1])]), 0.0
    server = serve(echo)
    judge = config(server.base_url, api_key=key, attempts=1, malformed_attempts=1)
    cases = [(f"p{i}", f"case {i}", "a response", "text") for i in range(len(texts))]
    produced = []
    if stops:
        for i, case in enumerate(cases):
            with pytest.raises(JudgeError, match=f"answered HTTP {surface[-3:]}.*~~~~") as error:
                judge_records(write_records(tmp_path / f"r{i}.jsonl", [case]), judge, progress=False)
            produced.append(str(error.value))
    else:
        result = judge_records(write_records(tmp_path / "r.jsonl", cases), judge, progress=False)
        assert result.errors == len(texts) and all("~~~~" in row["error"] for row in result.rows)
        produced += [row["error"] for row in read_rows(result.scores_path)]
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {key}".encode().decode("latin-1")
    produced += [*capsys.readouterr(), caplog.text]
    produced += [path.read_text() for path in tmp_path.rglob("*") if path.is_file()]
    assert not [leak for text in produced for leak in leaks(key, text)]


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS)
def test_a_url_holding_the_key_is_masked_in_messages(tmp_path, serve, monkeypatch, key):
    userinfo = f"user:{quote(key, safe='')}@"
    records = write_records(tmp_path / "r.jsonl")
    server = serve(lambda number, body, headers: (404, "no such model", 0.0))
    messages = []
    for base_url in (server.base_url.replace("//", f"//{userinfo}"), f"http://{userinfo}127.0.0.1:{free_port()}/v1"):
        with pytest.raises(JudgeError) as error:
            judge_records(records, config(base_url, api_key=key, attempts=1), progress=False)
        messages.append(str(error.value))
    monkeypatch.setenv("LLM_JUDGE_API_KEY", key)
    with pytest.raises(JudgeError) as error:
        JudgeConfig.from_environment(f"ftp://{userinfo}example.org/v1", "m")
    messages.append(str(error.value))
    assert all("user:" not in message for message in messages[:2])  # the endpoint is shown without its userinfo
    assert f"user:{MASK}@" in messages[2]
    assert not [leak for message in messages for leak in leaks(key, message)]


def test_userinfo_in_the_base_url_is_sent_as_basic_auth_and_never_logged(tmp_path, serve, caplog):
    import base64
    import logging
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="httpx")  # vLLM's logging setup, once run in this process, quiets httpx
    server = serve()
    judge_records(write_records(tmp_path / "r.jsonl"),
                  config(server.base_url.replace("//", "//user:s3cret-pass@"), attempts=1), progress=False)
    expected = "Basic " + base64.b64encode(b"user:s3cret-pass").decode()
    assert server.requests[0]["headers"]["Authorization"] == expected
    assert "HTTP Request: POST" in caplog.text and "s3cret-pass" not in caplog.text


def test_the_cli_prints_a_summary_per_control_method(tmp_path, serve, capsys):
    records = write_records(tmp_path / "r.jsonl")
    assert main(["judge", str(records), "--base-url", serve().base_url, "--model", "judge-model"]) == 0
    captured = capsys.readouterr()
    assert "| steering | 2 | 0 | 2.000 | 2.000 | 2.000 |" in captured.out
    assert "| text | 2 | 0 | 2.000 | 1.000 | 1.000 |" in captured.out
    assert "4 scored, 0 errors, 0 from the cache, 4 requests" in captured.err
    plain = serve()
    assert main(["judge", str(records), "--base-url", plain.base_url, "--model", "m", "--no-json-schema"]) == 0
    assert "response_format" not in plain.requests[0]["body"]


# --- the real vLLM server -----------------------------------------------------------------------------------------

def test_an_unreachable_judge_is_one_line_naming_the_url_and_the_variables(tmp_path):
    records = write_records(tmp_path / "r.jsonl")
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = subprocess.run([sys.executable, "-m", "steer_eval.cli", "judge", str(records), "--base-url", url,
                             "--model", "m"], capture_output=True, text=True, timeout=120,
                            env={k: v for k, v in os.environ.items() if not k.startswith("LLM_JUDGE_")})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"steer-eval: error: cannot reach the judge at {url}/chat/completions (ConnectError")
    assert "LLM_JUDGE_BASE_URL" in error and "LLM_JUDGE_MODEL" in error and "scores are kept" not in error


def stop_session(process, signal_number):
    try:
        os.killpg(process.pid, signal_number)
    except ProcessLookupError:
        pass  # it and everything it started have exited already


def check_rows(rows):
    """Every row has scores in range or a recorded error: the mechanics (a 135M model is a poor judge)."""
    for row in rows:
        if "error" in row:
            assert row["error"].startswith("malformed reply (3 attempts)") and "relevance" not in row
        else:
            assert row["relevance"] in (0, 1, 2) and row["fluency"] in (0, 1, 2)
            assert row["combined"] == combined(row["relevance"], row["fluency"])
