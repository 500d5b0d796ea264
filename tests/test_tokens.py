import pytest
import torch

from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenError, TokenStore, embedding_fingerprint, load_vectors


def identity(seed=0, hidden=8, name="model-a"):
    torch.manual_seed(seed)
    return ModelIdentity.of(name, torch.randn(32, hidden))


def token(name="german", hidden=8, model=None):
    return SteeringToken(name, torch.arange(hidden, dtype=torch.float32), (name,), model or identity(hidden=hidden),
                         {"lr": 1e-4})


def test_round_trip_is_equal(tmp_path):
    store = TokenStore(tmp_path)
    original = token()
    store.save(original)
    assert store.load("german") == original
    assert store.names() == ["german"]


def test_and_token_is_stored_without_angle_brackets(tmp_path):
    store = TokenStore(tmp_path)
    store.save(token("<and>"))
    assert (tmp_path / "and" / "vector.safetensors").is_file()
    assert store.load("<and>").name == "<and>"


def test_equality_sees_vector_and_metadata():
    a, b = token(), token()
    assert a == b
    b.vector[0] += 1
    assert a != b
    assert token() != SteeringToken("german", torch.arange(8.0), ("german",), identity(), {"lr": 2e-4})


def test_fingerprint_ignores_fp32_vs_bf16_storage():
    weight = torch.randn(16, 4).to(torch.bfloat16)
    assert embedding_fingerprint(weight.float()) == embedding_fingerprint(weight)
    assert embedding_fingerprint(weight.float() + 1) != embedding_fingerprint(weight)


def test_loading_for_another_model_names_both(tmp_path):
    store = TokenStore(tmp_path)
    store.save(token(model=identity(0, name="model-a")))
    with pytest.raises(TokenError, match=r"trained for model-a .*model in use is model-b"):
        store.load("german", expected=identity(1, name="model-b"))
    with pytest.raises(TokenError, match="hidden size 16"):
        store.load("german", expected=identity(0, hidden=16, name="model-b"))


def test_wrong_vector_size_is_rejected():
    with pytest.raises(TokenError, match="has 8 dims"):
        SteeringToken("german", torch.zeros(8), ("german",), identity(hidden=16))


def test_corrupt_files_give_a_clear_message(tmp_path):
    store = TokenStore(tmp_path)
    folder = store.save(token())
    (folder / "vector.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenError, match="corrupt or incomplete.*train the token again"):
        store.load("german")


def test_missing_token_lists_what_exists(tmp_path):
    store = TokenStore(tmp_path)
    store.save(token("spanish"))
    with pytest.raises(TokenError, match=r"no steering token 'german'.*available: spanish"):
        store.load("german")


def test_missing_and_says_how_to_proceed(tmp_path):
    store = TokenStore(tmp_path)
    store.save(token("german"))
    with pytest.raises(TokenError, match="composition mode needs a trained <and>.*concatenation or native_and"):
        load_vectors(store, ["german", "<and>"])
