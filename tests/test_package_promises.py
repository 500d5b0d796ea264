"""Error paths and arguments the documentation promises: one line for a user's mistake, token names where a user
passes them."""
import json

import pytest

from steer_eval.cli.main import main
from steer_eval.errors import UserError
from steer_eval.lmeval.models import SteeringHFLM


def test_steering_hf_with_tensor_parallelism_is_a_user_error_before_any_model_loads(monkeypatch):
    monkeypatch.setattr(SteeringHFLM, "build_backend", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UserError, match="steering_hf runs one model copy per process; use steering_vllm") as caught:
        SteeringHFLM.create_from_arg_string("tensor_parallel_size=2", {})
    assert "\n" not in str(caught.value)


def test_tokens_commands_take_the_names_a_user_passes(default_model_dir, capsys):
    assert main(["tokens", "nearest", "german", "<and>", "--k", "2", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["german", "<and>"]
    assert main(["tokens", "list", "spanish", "--json"]) == 0
    assert [row["name"] for row in json.loads(capsys.readouterr().out)["tokens"]] == ["spanish"]


def test_an_unknown_token_name_is_one_line_listing_the_folder(default_model_dir, capsys):
    assert main(["tokens", "nearest", "gremlin"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("steer-eval: error: no steering token 'gremlin'") and "german" in line
