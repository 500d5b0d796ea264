"""Tasks for stock models that steer by themselves (`--metadata '{"prompt_only": true}'`): documents, the recorded
setting, and lm-eval's stock `steered` model against `steering_hf` with control_method=caa on the same CAA vector."""
import json
from pathlib import Path

import pytest
import torch

from steer_eval.errors import SettingError
from steer_eval.lmeval import tasks


def test_prompt_only_documents_give_stock_models_the_plain_prompt():
    docs = tasks.documents("compose_2_seen")[:4]
    plain = tasks.prompt_only_documents(docs, True)
    assert [d["text_input"] for d in plain] == [d["prompt"] for d in docs]
    assert all(d["prompt_only"] is True for d in plain)
    assert [{k: v for k, v in d.items() if k not in ("text_input", "prompt_only")} for d in plain] == [
        {k: v for k, v in d.items() if k != "text_input"} for d in docs]
    assert all(d["instructions"][0] in d["text_input"] and d["text_input"] != d["prompt"] for d in docs)  # untouched
    assert tasks.prompt_only_documents(docs, False) == docs


def test_load_docs_reads_prompt_only_from_metadata_and_ignores_the_rest():
    from steer_eval.tasks.utils import load_docs

    plain = load_docs(steer_task="steer_german", prompt_only=True, version=1.0, pretrained="x")["test"]
    assert plain[0]["text_input"] == plain[0]["prompt"] and plain[0]["prompt_only"] is True
    default = load_docs(steer_task="steer_german", version=1.0, pretrained="x", steer_path="s.pt")["test"]
    assert default[0]["text_input"] != default[0]["prompt"] and "prompt_only" not in default.column_names
    assert load_docs(steer_task="steer_german", prompt_only=False)["test"][0] == default[0]
    for wrong in ("yes", "true", 1):
        with pytest.raises(SettingError, match="prompt_only must be true or false.*--metadata"):
            load_docs(steer_task="steer_german", prompt_only=wrong)


def test_score_records_the_prompt_only_setting():
    doc = tasks.documents("steer_german")[0]
    [plain] = tasks.prompt_only_documents([doc], True)
    values = tasks.score(plain, "Das ist eine Antwort auf Deutsch, kurz und klar, für den heutigen Test.")
    assert (values["control_method"], values["mode"]) == ("none", "stock model (prompt only)")
    assert values["accuracy"] == 1.0 and values["steering_tokens"] == {}
    assert (tasks.score(doc, "plain")["control_method"], tasks.score(doc, "plain")["mode"]) == (
        "text", "stock model (instructions as text)")
    steered = tasks.SteeredResponse("plain", {"control_method": "caa", "mode": "composition"})
    assert tasks.score(plain, steered)["control_method"] == "caa"  # our classes say how they steered


# --- end to end: lm-eval's stock `steered` model and steering_hf (caa) give the same responses ------------------

def lm_eval(lm_eval_main, *args: str, cwd: Path) -> tuple[dict[int, dict], dict]:
    """Run lm_eval's command (its CLI entry point, in this process): (logged samples of steer_german by doc_id, its
    aggregated results)."""
    lm_eval_main(cwd, *args, "--tasks", "steer_german", "--limit", "2", "--gen_kwargs", "max_gen_toks=16",
                 "--log_samples", "--output_path", cwd / "out")
    [samples] = (cwd / "out").glob("**/samples_steer_german_*.jsonl")
    [results] = (cwd / "out").glob("**/results_*.json")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {row["doc_id"]: row for row in rows}, json.loads(results.read_text())["results"]["steer_german"]


@pytest.mark.slow
def test_stock_steered_model_on_prompt_only_tasks_equals_steering_hf_caa(tiny_hf, tiny_model_dir, lm_eval_main,
                                                                          tmp_path):
    from steer_eval.training.caa import caa_token, export_steered
    from steer_eval.backends.generation import GenerationConfig
    from steer_eval.steering.tokens import TokenStore

    store = TokenStore(tmp_path / "tokens")
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    # A factor where the response depends on both the prompt and the vector (larger ones drown the prompt: every
    # document then gets the same response, and the comparison would prove little).
    token = caa_token("german", vector, 1, 0.03, tiny_hf.identity)
    store.save(token)
    steer_path = export_steered([token], tmp_path / "steer.pt")

    (tmp_path / "stock").mkdir()
    stock, stock_results = lm_eval(
        lm_eval_main, "--model", "steered", "--model_args",
        f"pretrained={tiny_model_dir},steer_path={steer_path},dtype=float32",
        "--device", "cpu", "--apply_chat_template", "--metadata", '{"prompt_only": true}', cwd=tmp_path / "stock")
    (tmp_path / "ours").mkdir()
    ours, our_results = lm_eval(
        lm_eval_main, "--model", "steering_hf", "--model_args",
        f"pretrained={tiny_model_dir},tokens_dir={store.directory},control_method=caa,dtype=float32,batch_size=1",
        "--device", "cpu", cwd=tmp_path / "ours")

    assert sorted(stock) == sorted(ours) == [0, 1]
    assert (stock_results["control_method,none"], stock_results["mode,none"]) == ("none", "stock model (prompt only)")
    assert our_results["control_method,none"] == "caa"
    for doc_id, sample in stock.items():
        doc = sample["doc"]
        assert doc["prompt_only"] and doc["text_input"] == doc["prompt"]
        # The stock model read exactly the user turn steering_hf assembles for caa: the plain prompt, chat template.
        assembled = tiny_hf.assemble(doc["prompt"], ["german"], control_method="caa")
        assert sample["arguments"]["gen_args_0"]["arg_0"] == tiny_hf.tokenizer.decode(assembled.input_ids)
        stock_text, our_text = sample["filtered_resps"][0], ours[doc_id]["filtered_resps"][0]
        assert stock_text == our_text, (doc_id, stock_text, our_text)
        unsteered = tiny_hf.generate([tiny_hf.assemble(doc["prompt"], [], control_method="text")],
                                     GenerationConfig(max_new_tokens=16), progress=False)[0]
        assert our_text.strip() and our_text != unsteered  # the vector was added, not ignored by both
    assert stock[0]["filtered_resps"] != stock[1]["filtered_resps"]  # and the prompt still matters
