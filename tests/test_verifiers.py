import ast
import importlib.util
from pathlib import Path
from unittest import mock

import pytest

from steer_eval.scoring.verifiers import (
    VERIFIERS,
    count_sentences,
    count_words,
    detect_language,
    has_sentences,
    is_json_answer,
    is_language,
    is_lowercase,
    is_title_case,
    is_uppercase,
    run_verifier,
    split_sentences,
    words_in_range,
)

# Model-style outputs used to check our word count against lm-eval IFEval's own.
WORD_COUNT_CORPUS = [
    "",
    "   \n\t ",
    "Hello world.",
    "I don't think it's ready, isn't it?",
    "A well-known, state-of-the-art, e-mail-based workflow.",
    "The value is 3.5, not 3,500 or -2.75e10.",
    "Visit https://example.com/path?q=1&x=2 or www.test.org for more.",
    "Great job! 🎉🎉 Keep going 🚀",
    "Über die Brücke gehen wir morgen früh, weil das Wetter schön ist.",
    "L'été dernier, nous sommes allés à la plage près de Nice.",
    "¿Dónde está la biblioteca? ¡Está allí!",
    "## Summary\n\n- **Point one**: fast\n- **Point two**: cheap\n- *Point three*: good",
    "1. Preheat the oven to 180°C.\n2. Mix flour & sugar.\n3. Bake for 25–30 minutes.",
    "```python\ndef add(a, b):\n    return a + b\n```",
    "Use `snake_case` for variables and `CamelCase` for classes.",
    "Email me at jane.doe@example.com, or call +1 (555) 010-9999.",
    "He said, \"Wait...\" and then — silence.",
    "Dr. Smith arrived at 9 a.m. on Jan. 5th, 2024.",
    "Prices: $19.99, €5, £3.50 and ¥1000.",
    "Tabs\tand\nnewlines\r\nshould not matter.",
    "straße ÉCOLE naïve café coöperate",
    "x_1 + x_2 = y__3",
    "> Quoted text with *emphasis* and ~~strike~~.",
    "| Name | Age |\n|------|-----|\n| Ann  | 31  |\n| Bob  | 27  |",
    "It's 5 o'clock somewhere; rock 'n' roll!",
    "Ça va? Oui, ça va très bien, merci beaucoup.",
    "Das ist ein Beispiel-Satz mit Bindestrich und Zahlen wie 1.000,50 Euro.",
    "C'est l'heure du déjeuner, n'est-ce pas ?",
    "{\"answer\": \"42\", \"confidence\": 0.9}",
    "...?!... ---- *** ###",
    "日本語のテキストと English words mixed together.",
    "Version v2.0.1-beta was released on 2024-05-01T10:00:00Z.",
    "Step 1) Open the app.\nStep 2) Tap 'Settings'.\nStep 3) Done!",
    "I'm sure you'll love it—we've tested it extensively.",
    "a" * 50 + " " + "b" * 3,
    "O'Reilly's co-founder isn't here; she's in São Paulo.",
]


MIN_HARD_TEXTS = 20


def _load_ifeval_count_words():
    import nltk

    # instructions_util calls nltk.download("punkt_tab") at import when the data is
    # missing; count_words only needs RegexpTokenizer, so the download is blocked.
    with mock.patch.object(nltk, "download", return_value=True):
        try:
            from lm_eval.tasks.ifeval.instructions_util import count_words as ifeval_count_words

            return ifeval_count_words
        except ModuleNotFoundError as missing:
            # The module also imports `immutabledict` (lm-eval's "ifeval" extra);
            # without it, run IFEval's count_words source as published.
            if missing.name != "immutabledict":
                raise
    package_dir = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0])
    source = (package_dir / "tasks" / "ifeval" / "instructions_util.py").read_text()
    function = next(
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "count_words"
    )
    namespace = {"nltk": nltk}
    exec(compile(ast.Module(body=[function], type_ignores=[]), "instructions_util.py", "exec"), namespace)
    return namespace["count_words"]


@pytest.fixture(scope="module")
def ifeval_count_words():
    pytest.importorskip("lm_eval")
    return _load_ifeval_count_words()


def test_the_corpus_holds_texts_where_counting_words_is_not_splitting_on_spaces(ifeval_count_words):
    """The parity test below means something only where IFEval's count differs from the obvious one: contractions,
    hyphens, numbers, URLs, markup, emoji, scripts without spaces."""
    differ = [text for text in WORD_COUNT_CORPUS if ifeval_count_words(text) != len(text.split())]
    assert len(differ) >= MIN_HARD_TEXTS, differ


@pytest.mark.parametrize("text", WORD_COUNT_CORPUS)
def test_count_words_matches_ifeval(text, ifeval_count_words):
    assert count_words(text) == ifeval_count_words(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("   ", 0),
        ("one", 1),
        ("don't", 2),
        ("well-known", 2),
        ("3.5 apples", 3),
        ("Grüße aus München", 3),
        ("🎉 🚀", 0),
        ("- a\n- b\n- c", 3),
    ],
)
def test_count_words(text, expected):
    assert count_words(text) == expected


@pytest.mark.parametrize(
    "text, low, high, expected",
    [
        ("one two three", 3, 3, True),
        ("one two three", 1, 5, True),
        ("one two three", 4, 10, False),
        ("one two three", 0, 2, False),
        ("", 0, 0, True),
        ("", 1, 10, False),
        ("don't stop", 3, 3, True),
    ],
)
def test_words_in_range(text, low, high, expected):
    assert words_in_range(text, low, high) is expected


LANGUAGE_SAMPLES = {
    "de": [
        "Heute Morgen bin ich mit dem Fahrrad zur Arbeit gefahren, weil das Wetter so schön war.",
        "Die Kinder spielen im Garten, während ihre Eltern in der Küche das Abendessen vorbereiten.",
        "Wir müssen die Ergebnisse der Untersuchung noch einmal sorgfältig überprüfen, bevor wir sie veröffentlichen.",
    ],
    "es": [
        "Esta mañana fui al mercado para comprar frutas frescas y verduras para toda la semana.",
        "Los estudiantes tienen que entregar el proyecto final antes del viernes por la tarde.",
        "Mi abuela siempre prepara una paella deliciosa cuando toda la familia viene a visitarla.",
    ],
    "fr": [
        "Ce matin, je suis allé à la boulangerie pour acheter du pain frais et des croissants.",
        "Les enfants jouent dans le jardin pendant que leurs parents préparent le dîner dans la cuisine.",
        "Nous devons vérifier soigneusement les résultats de l'étude avant de les publier la semaine prochaine.",
    ],
    "it": [
        "Questa mattina sono andato al mercato per comprare frutta fresca e verdura per la settimana.",
        "I bambini giocano nel giardino mentre i loro genitori preparano la cena in cucina.",
        "Dobbiamo controllare attentamente i risultati della ricerca prima di pubblicarli il mese prossimo.",
    ],
    "pt": [
        "Hoje de manhã fui ao mercado para comprar frutas frescas e legumes para a semana inteira.",
        "As crianças estão brincando no quintal enquanto os pais preparam o jantar na cozinha.",
        "Precisamos verificar com cuidado os resultados da pesquisa antes de publicá-los no próximo mês.",
    ],
}
LANGUAGE_CASES = [(lang, text) for lang, texts in LANGUAGE_SAMPLES.items() for text in texts]


@pytest.mark.parametrize("lang, text", LANGUAGE_CASES)
def test_is_language_detects_each_language(lang, text):
    assert count_words(text) >= 8
    assert detect_language(text) == lang
    assert is_language(text, lang)
    other_languages = set(LANGUAGE_SAMPLES) - {lang}
    assert not any(is_language(text, other) for other in other_languages)


@pytest.mark.parametrize(
    "text, lang",
    [
        ("", "de"),
        ("   \n\t", "fr"),
        ("12345 !!! ???", "es"),
        ("🎉🎉🎉", "it"),
        ("I went to the market this morning and bought a Brezel for breakfast.", "de"),
        ("The weather was lovely today, so we walked along the river after lunch.", "fr"),
    ],
)
def test_is_language_not_followed(text, lang):
    assert is_language(text, lang) is False


def test_is_language_accepts_code_in_any_case():
    assert is_language(LANGUAGE_SAMPLES["de"][0], "DE")


def test_detect_language_returns_none_for_undetectable_text():
    assert detect_language("") is None
    assert detect_language("  ") is None
    assert detect_language("1234 5678") is None


@pytest.mark.parametrize("text", ["ok si", "bon", "die Hand", "ciao amore", "no sé"])
def test_language_detection_is_deterministic(text):
    first = detect_language(text)
    assert all(detect_language(text) == first for _ in range(10))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hello world", True),
        ("hello world 123!", True),
        ("straße café naïve über", True),
        ("- item one\n- item two", True),
        ("Hello world", False),
        ("hello World", False),
        ("hello wÖrld", False),
        ("école Élan", False),
        ("", False),
        ("   ", False),
        ("123 456 !!!", False),
        ("日本語", False),
    ],
)
def test_is_lowercase(text, expected):
    assert is_lowercase(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("HELLO WORLD", True),
        ("HELLO WORLD 123!", True),
        ("ÜBER ÉCOLE", True),
        ("- ITEM ONE\n- ITEM TWO", True),
        ("HELLO World", False),
        ("STRAßE", False),
        ("ÜBER école", False),
        ("", False),
        ("   ", False),
        ("123 !!!", False),
    ],
)
def test_is_uppercase(text, expected):
    assert is_uppercase(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Big Sky", True),
        ("\"The Big Sky\"", True),
        ("“The Big Sky”", True),
        ("'The Big Sky'", True),
        ("The big Sky", False),
        ("the Big Sky", False),
        ("# The Big Sky", True),
        ("**The Big Sky**", True),
        ("- First Item\n- Second Item", True),
        ("- First item", False),
        ("(Hello) [World]", True),
        ("¿Dónde Está?", True),
        ("¡Hola Amigo!", True),
        ("Über Écoles Straße", True),
        ("Über écoles", False),
        ("The 3rd Of May 2024", True),
        ("The Lord of the Rings", False),
        ("Rock & Roll - Live", True),
        ("Don't Stop Me Now", True),
        ("Well-known Facts", True),
        ("", False),
        ("   ", False),
        ("2024", False),
        ("!!!", False),
    ],
)
def test_is_title_case(text, expected):
    assert is_title_case(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        ("   \n\n  ", 0),
        ("Hello there.", 1),
        ("Hello there", 1),
        ("Hello there. How are you?", 2),
        ("Stop! Why?! Because... I said so.", 4),
        ("Really?! Yes.", 2),
        ("Wait... what?", 1),  # "..." before a lowercase word is a pause
        ("The value is 3.5 today. It was 2.75 yesterday.", 2),
        ("Visit example.com for details. Thanks.", 2),
        ("Dr. Smith met Mr. Jones. They talked.", 2),
        ("Mrs. Brown and Ms. Green went to St. Louis.", 1),
        ("Prof. Lee and Sr. Ortiz met Jr. staff.", 1),
        ("We need apples, pears, etc. for the pie.", 1),
        ("Bring fruit, e.g. apples. Or veggies, i.e. carrots.", 2),
        ("We met at 9 a.m. and left at 5 p.m. on Friday.", 1),
        ("The U.S. economy grew. Prices rose.", 2),
        ("It costs approx. 5 dollars. Cheap.", 2),
        ("See Fig. 3 and No. 7 for details.", 1),
        ("I said no. Then I left.", 2),
        ("I ate a fig. It was sweet.", 2),
        ("Cats vs. dogs is an old debate.", 1),
        ("We bought apples, pears, etc.", 1),
        ("- apples\n- pears", 2),
        ("* apples\n* pears\n* plums", 3),
        ("1. First item\n2. Second item", 2),
        ("1) First item\n2) Second item", 2),
        ("1. First item. It is good.\n2. Second item", 3),
        ("# Title\nSome text here. More text.", 3),
        ("## Summary", 1),
        ("Intro line:\n\n- point one\n- point two\n\nThat's all.", 4),
        ("He said \"Stop.\" Then he left.", 2),
        ("(This is an aside.) Then more.", 2),
        ("**Done.** Next step.", 2),
        ("Text\n---\nMore text", 2),
        ("```\ncode here\n```", 1),
        ("🎉🎉", 0),
        ("> Quoted sentence. Another one.", 2),
        ("Version 2.0 is out!", 1),
    ],
)
def test_count_sentences(text, expected):
    assert count_sentences(text) == expected
    assert has_sentences(text, expected)
    assert not has_sentences(text, expected + 1)


def test_split_sentences_returns_stripped_pieces():
    assert split_sentences("Hello there.  How are you?\n- apples") == [
        "Hello there.",
        "How are you?",
        "apples",
    ]
    assert split_sentences("1. First item") == ["First item"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"answer": "Paris"}', True),
        ('  {"answer": 42}\n', True),
        ('{"answer": null}', True),
        ('{"answer": {"city": "Paris", "country": "France"}}', True),
        ('```json\n{"answer": "Paris"}\n```', True),
        ('```\n{"answer": "Paris"}\n```', True),
        ('```JSON\n{"answer": "Paris"}\n```', True),
        ('```{"answer": "Paris"}```', True),
        ('\n```json\n{\n  "answer": "Paris"\n}\n```\n', True),
        ('{"answer": "Paris", "confidence": 0.9}', False),
        ('{"Answer": "Paris"}', False),
        ('{"result": "Paris"}', False),
        ("{}", False),
        ('["answer"]', False),
        ('"answer"', False),
        ("42", False),
        ("null", False),
        ('{"answer": "Paris"', False),
        ("{'answer': 'Paris'}", False),
        ('The answer is {"answer": "Paris"}', False),
        ('{"answer": "Paris"} Hope this helps!', False),
        ('```json\n{"answer": "Paris"}\n```\nHope this helps!', False),
        ('```json\n```json\n{"answer": "Paris"}\n```\n```', False),
        ('```python\nprint("hi")\n```', False),
        ("", False),
        ("   ", False),
        ("```\n```", False),
    ],
)
def test_is_json_answer(text, expected):
    assert is_json_answer(text) is expected


def test_verifier_registry_names():
    assert set(VERIFIERS) == {
        "words_in_range",
        "is_language",
        "is_lowercase",
        "is_uppercase",
        "is_title_case",
        "has_sentences",
        "is_json_answer",
    }


@pytest.mark.parametrize(
    "name, text, params, expected",
    [
        ("words_in_range", "one two three", {"low": 1, "high": 3}, True),
        ("words_in_range", "one two three", {"low": 4, "high": 9}, False),
        ("is_language", LANGUAGE_SAMPLES["it"][0], {"lang": "it"}, True),
        ("is_language", LANGUAGE_SAMPLES["it"][0], {"lang": "es"}, False),
        ("is_lowercase", "all lower", {}, True),
        ("is_uppercase", "ALL UPPER", {}, True),
        ("is_title_case", "All Title", {}, True),
        ("has_sentences", "One. Two. Three.", {"n": 3}, True),
        ("has_sentences", "One. Two.", {"n": 3}, False),
        ("is_json_answer", '{"answer": 1}', {}, True),
    ],
)
def test_run_verifier(name, text, params, expected):
    assert run_verifier(name, text, params) is expected


def test_run_verifier_unknown_name_lists_known_verifiers():
    with pytest.raises(ValueError) as error:
        run_verifier("is_haiku", "text", {})
    assert not isinstance(error.value, KeyError)
    message = str(error.value)
    assert "is_haiku" in message
    assert all(name in message for name in VERIFIERS)


def test_run_verifier_rejects_wrong_params():
    with pytest.raises(TypeError):
        run_verifier("words_in_range", "text", {"minimum": 1})
