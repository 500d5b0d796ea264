"""Every `lm_eval` command of README and docs, run as written in this process (lm-eval's own main on its argv), with
small caps: `--limit 1`, at most 8 new tokens, outputs in a temporary folder. steering_vllm gets the session's vLLM
engine of the default model (starting one per command would cost ~30 s each); every other model loads as the
command says. A command that drifts from the code (a model argument, a task, a flag) fails here. The data-parallel
command's answers (Ray actors) must equal the same command's in one process."""
from __future__ import annotations

import re
import shlex

import pytest

from test_docs import all_commands

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]
CAPS = {"--limit": "1"}
MAX_NEW_TOKENS = "max_gen_toks=8"


def lm_eval_commands() -> list:
    return [c for c in all_commands() if shlex.split(c.text, comments=True)[0] in ("lm_eval", "lm-eval")]


def capped(args: list[str]) -> list[str]:
    """The command's arguments with the test's caps: --limit 1, max_gen_toks 8 (added to its --gen_kwargs)."""
    args = list(args)
    for flag, value in CAPS.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    if "--gen_kwargs" in args:
        args[args.index("--gen_kwargs") + 1] += f",{MAX_NEW_TOKENS}"
    else:
        args += ["--gen_kwargs", MAX_NEW_TOKENS]
    return args


def test_the_docs_show_the_card_command():
    assert any(c.text == "lm_eval --model steering_vllm --tasks compose_2,compose_3" for c in lm_eval_commands())


@pytest.mark.parametrize("command", lm_eval_commands(), ids=lambda c: c.source)
def test_the_lm_eval_commands_of_the_docs_run(command, vllm_default, lm_eval_main, monkeypatch, tmp_path):
    from cli_in_process import cli
    from steer_eval.lmeval.models import SteeringVLLMLM

    def session_engine(self, spec):
        assert (spec.model, spec.tokens_dir) == ("smollm2-135m", None), spec  # the defaults the docs rely on
        return vllm_default

    monkeypatch.setattr(SteeringVLLMLM, "build_backend", session_engine)
    text = command.text
    for inner in re.findall(r"\$\(([^()]*)\)", text):  # $(steer-eval models fetch ...): its printed path
        text = text.replace(f"$({inner})", cli(*shlex.split(inner)[1:]).stdout.strip())
    args = shlex.split(text, comments=True)[1:]
    stdout, _ = lm_eval_main(tmp_path, *capped(args), "--log_samples", "--output_path", str(tmp_path / "out"))
    tasks = args[args.index("--tasks") + 1].split(",")
    assert all(task in stdout for task in tasks), stdout[-2000:]
    model_args = args[args.index("--model_args") + 1] if "--model_args" in args else ""
    if "data_parallel_size=" in model_args:  # the Ray actors answer what one process answers
        single = re.sub(r"data_parallel_size=\d+,?", "", model_args).rstrip(",")
        plain = list(args)
        del plain[plain.index("--model_args"):plain.index("--model_args") + 2]
        lm_eval_main(tmp_path, *capped(plain + (["--model_args", single] if single else [])), "--log_samples",
                     "--output_path", str(tmp_path / "single"))
        assert responses(tmp_path / "out") == responses(tmp_path / "single")


def responses(folder) -> dict:
    import json
    return {path.name.split("_20")[0]: [json.loads(line)["resps"] for line in path.read_text().splitlines()]
            for path in folder.rglob("samples_*.jsonl")}
