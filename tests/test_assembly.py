import pytest
import torch

from steer_eval.steering.assembly import assemble, choose_paraphrase, embed, join_instructions, steering_sequence
from steer_eval.scoring.behaviors import BehaviorError, get_behavior
from steer_eval.steering.embedding_space import InputEmbeddings

PROMPT = "Why do cats purr?"


def decode(tokenizer, ids):
    return tokenizer.decode(list(ids))


def test_slots_follow_the_prompt_inside_the_user_turn(tokenizer):
    a = assemble(PROMPT, ["german", "words_10_50"], tokenizer, mode="composition")
    assert a.token_names == ("german", "<and>", "words_10_50")
    first = a.slots[0][0]
    assert [pos for pos, _ in a.slots] == [first, first + 1, first + 2]
    assert decode(tokenizer, a.input_ids[:first]).endswith("<|im_start|>user\n" + PROMPT)
    assert decode(tokenizer, a.input_ids[first + 3:]) == "<|im_end|>\n<|im_start|>assistant\n"


def test_without_behaviours_equals_the_chat_template(tokenizer):
    a = assemble(PROMPT, [], tokenizer)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True,
                                             add_generation_prompt=True, return_dict=False)
    assert list(a.input_ids) == list(expected) and a.slots == ()


def test_text_mode_joins_instructions_with_and(tokenizer):
    a = assemble(PROMPT, ["german", "words_10_50"], tokenizer, control_method="text",
                 instructions=["Respond in German", "Keep it between 10 and 50 words"])
    assert a.slots == ()
    assert a.instruction == "Respond in German and keep it between 10 and 50 words."
    assert f"{PROMPT}\n\nRespond in German and keep" in decode(tokenizer, a.input_ids)


def test_hybrid_puts_tokens_before_the_instruction(tokenizer):
    a = assemble(PROMPT, ["spanish"], tokenizer, control_method="hybrid")
    position = a.slots[0][0]
    assert decode(tokenizer, a.input_ids[:position]).endswith(PROMPT)
    assert decode(tokenizer, a.input_ids[position + 1:]).startswith("\n\n" + a.instruction)


def test_modes(tokenizer):
    concat = assemble(PROMPT, ["german", "lowercase"], tokenizer, mode="concatenation")
    native = assemble(PROMPT, ["german", "lowercase"], tokenizer, mode="native_and")
    assert concat.token_names == native.token_names == ("german", "lowercase")
    gap = native.slots[1][0] - native.slots[0][0] - 1
    assert decode(tokenizer, native.input_ids[native.slots[0][0] + 1:native.slots[1][0]]) == " and" and gap >= 1
    assert steering_sequence(["a", "b", "c"], "composition") == ["a", "<and>", "b", "<and>", "c"]


def test_paraphrase_choice_is_reproducible_and_varies():
    german = get_behavior("german")
    assert choose_paraphrase(german, PROMPT, 0) == choose_paraphrase(german, PROMPT, 0)
    assert len({choose_paraphrase(german, f"prompt {i}", 0) for i in range(50)}) > 5


def test_join_instructions_lowercases_later_clauses_only():
    assert join_instructions(["Respond in German", "Use Title Case"]) == "Respond in German and use Title Case."


@pytest.mark.parametrize("kwargs, message", [
    ({"control_method": "magic"}, "unknown control method 'magic'"),
    ({"mode": "sum"}, "unknown mode 'sum'"),
])
def test_bad_options(tokenizer, kwargs, message):
    with pytest.raises(BehaviorError, match=message):
        assemble(PROMPT, ["german"], tokenizer, **kwargs)


def test_conflicting_behaviours_fail_before_tokenising(tokenizer):
    with pytest.raises(BehaviorError, match="both format"):
        assemble(PROMPT, ["uppercase", "lowercase"], tokenizer)


def test_embed_replaces_only_slot_rows_and_is_differentiable(tokenizer):
    a = assemble(PROMPT, ["german"], tokenizer)
    weight = torch.randn(len(tokenizer), 8)
    vector = torch.randn(8, requires_grad=True)
    rows = embed(a, InputEmbeddings(weight, 3.0), {"german": vector})
    position = a.slots[0][0]
    expected = weight[torch.tensor(a.input_ids)] * 3.0  # the module's scale applies to prompt rows, not to vectors
    keep = [i for i in range(len(a.input_ids)) if i != position]
    assert torch.equal(rows[keep], expected[keep])
    assert torch.equal(rows[position], vector.detach())
    rows.sum().backward()
    assert torch.equal(vector.grad, torch.ones(8))
    with pytest.raises(KeyError, match="german"):
        embed(a, InputEmbeddings(weight), {})
