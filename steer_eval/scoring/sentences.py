"""Sentence splitting for the `sentences_N` behaviours: rule-based, language-aware, linear in the text's length.

The text is cut into lines, each line into whitespace-separated tokens, and every token is asked once whether it
ends a sentence, looking only at itself and the first letter of the next token. No regular expression can
backtrack over a long run of dots, spaces or backticks, so any input takes time proportional to its length.
"""
from __future__ import annotations

from functools import lru_cache

import regex

# Characters IFEval's word tokenizer (`\w+` on the `regex` engine) counts as word characters, combining marks too.
WORD = regex.compile(r"\w+")

# Marks that end a sentence only when whitespace or the end of the line follows them.
_END_MARKS = ".!?…‼⁇⁈⁉؟।॥"
# Full-width marks end a sentence wherever they stand: CJK text has no spaces between sentences.
_FULL_WIDTH_END = regex.compile(r"[。！？｡]++[」』）)\"'”’]*+")
_CLOSERS = "\"'”’“‘»«›)]}*_」』"
_MAY_END = frozenset(_END_MARKS + _CLOSERS)
_OPENERS = "\"'“‘„‚«»‹([{*_¿¡"
_QUOTES = "\"'”’“‘»«›」』"
# A whitespace-separated token, with any marks and quotes that stand alone after it attached: French spacing
# ("Pourquoi ? »") puts the sentence's last marks after a space.
_TOKEN = regex.compile(r"\S++(?:\s++[%s]++(?!\S))*+" % regex.escape(_END_MARKS + _CLOSERS))
_CLOSERS_AND_SPACE = _CLOSERS + " \t\u00a0\u202f"
_END_MARKS_AND_SPACE = _END_MARKS + " \t\u00a0\u202f"
_LIST_OR_HEADING_MARKER = regex.compile(r"[ \t]*+(?:#{1,6}+|>|[-*+•]|\d{1,3}+[.)])(?:\s++|$)")
_FENCE_LINE = regex.compile(r"[ \t]*+(?:`{3,}+|~{3,}+)[\w+#.-]*+[ \t]*+")

# Abbreviations that stand before a name or a number: the sentence goes on after them ("Dr. Smith", "Nr. 5").
_NEVER_FINAL = {
    "en": {"dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "al", "approx", "pp", "viz",
           "capt", "lt", "sgt", "dept"},
    "de": {"dr", "prof", "hr", "hrn", "fr", "frl", "z.b", "d.h", "u.a", "bzw", "vgl", "ca", "ggf", "evtl", "bspw",
           "sog", "inkl", "zzgl", "exkl", "nr", "s", "abs", "kap", "bd", "str", "tel", "geb", "gest", "ehem",
           "z.t", "u.u", "o.ä", "i.d.r", "m.e", "allg", "insb", "jh", "jhd", "v.a", "zb", "dh", "st", "med", "dipl", "ing", "mo", "di", "mi", "do", "sa"},
    "fr": {"m", "mm", "mme", "mmes", "mlle", "mlles", "dr", "pr", "me", "st", "ste", "cf", "p.ex", "ex", "env",
           "n°", "no", "p", "pp", "vol", "chap", "av", "bd", "tél", "c.-à-d", "c.à.d"},
    "es": {"sr", "sra", "srta", "sres", "dr", "dra", "d", "dña", "lic", "ing", "prof", "ud", "uds", "vd", "vds",
           "p.ej", "ej", "aprox", "pág", "págs", "núm", "n.º", "nº", "art", "cap", "vol", "av", "avda", "c", "tel",
           "admón", "dpto", "gral", "sto", "sta"},
    "it": {"sig", "sig.ra", "sig.na", "sigg", "dott", "dott.ssa", "dr", "prof", "prof.ssa", "ing", "avv", "arch",
           "geom", "rag", "on", "p.es", "es", "pag", "pagg", "n", "nr", "art", "cap", "vol", "tel", "ca", "s", "v",
           "cfr", "ss"},
    "pt": {"sr", "sra", "srs", "sras", "srta", "dr", "dra", "prof", "profa", "eng", "d", "p.ex", "ex", "pág",
           "págs", "n.º", "nº", "núm", "art", "cap", "vol", "av", "tel", "aprox", "r", "exa", "exas", "exmo", "exma"},
}
# English titles that are also words: abbreviations only when capitalised ("Gen. Patton", "the gen. Then").
_NEVER_FINAL_CAPITALISED_EN = {"Gen", "Col", "Rev", "Hon", "Gov", "Sen", "Rep", "Mt", "Ft"}
# English words that are abbreviations only before a number: "See No. 5", but "I said no. Then", "No. No."
_BEFORE_NUMBER_EN = {"no", "nos", "fig", "figs", "vol", "vols", "ch", "eq", "sec", "art"}
# Abbreviations that also close sentences ("... apples, pears, etc. Then we ..."): final before a capital letter.
_FINAL_BEFORE_CAPITAL = {
    "en": {"etc", "a.m", "p.m", "u.s", "u.k", "u.n", "e.u", "inc", "ltd", "co", "corp", "jan", "feb", "mar",
           "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"},
    "de": {"usw", "u.s.w", "etc", "usf", "ff", "u.ä", "o.a", "jan", "feb", "mär", "apr", "jun", "jul", "aug", "sep",
           "sept", "okt", "nov", "dez"},
    "fr": {"etc", "cie", "janv", "févr", "avr", "juil", "sept", "oct", "nov", "déc"},
    "es": {"etc", "cía", "s.a"},
    "it": {"ecc", "etc", "s.p.a", "s.r.l"},
    "pt": {"etc", "cia", "ltda", "s.a"},
}
_GERMAN_MONTHS = {"januar", "jänner", "februar", "märz", "april", "mai", "juni", "juli", "august", "september",
                  "oktober", "november", "dezember"}


def _starts_with_capital(token: str) -> bool:
    first = token[0] if token[0].isalnum() else next((char for char in token if char.isalnum()), "")
    return first.isupper() or first.istitle()


@lru_cache(maxsize=1 << 14)  # degenerate generations repeat the same few tokens thousands of times
def _ends_sentence(token: str, following: str, lang: str, case_tells: bool) -> bool:
    """Whether `token` (not the line's last) closes a sentence, given the token after it.

    `case_tells` is False in text without lowercase letters: there a capital after a quote or "..." says nothing
    (read as lowercase: the sentence goes on), while after an abbreviation it still ends the sentence."""
    core = token.rstrip(_CLOSERS_AND_SPACE)
    bare = core.rstrip(_END_MARKS_AND_SPACE)
    if len(bare) == len(core):
        return False
    if len(core) < len(token) and any(char in _QUOTES for char in token[len(core):]):
        # `He asked, "Why?" and left.`, `She wrote 'Done.' on the board.`: a quote inside a sentence.
        return case_tells and _starts_with_capital(following)
    run = core[len(bare):].replace(" ", "")
    if run == ".":
        return _period_ends_sentence(bare.lstrip(_OPENERS), following, lang)
    if run.startswith("..") or run.startswith("…"):
        return case_tells and _starts_with_capital(following)  # a pause unless a capital follows
    return True  # "?", "!", "?!", "!!!"


def _period_ends_sentence(word: str, following: str, lang: str) -> bool:
    if "'" in word or "’" in word:
        word = word.replace("’", "'").rsplit("'", 1)[-1]  # elision: "L'Avv." is "Avv."
    if not word:
        return True
    key, rules = word.lower(), lang if lang in _NEVER_FINAL else "en"
    if key in _NEVER_FINAL[rules] or rules == "en" and word in _NEVER_FINAL_CAPITALISED_EN:
        return False
    if rules == "en" and key in _BEFORE_NUMBER_EN:
        return not following[0].isdigit()
    if key in _FINAL_BEFORE_CAPITAL[rules]:
        return _starts_with_capital(following)
    if len(word) == 1 and word.isalpha():
        return word == "i"  # initials and one-letter abbreviations: "J. K. Rowling", "z. B.", "p. ej."
    if word[0].isdigit() and word.isdigit():
        if len(word) <= 2 and following.rstrip(".,").lower() in _GERMAN_MONTHS:
            return False  # "am 3. Oktober"
        return not (rules == "de" and len(word) <= 3)  # German ordinals: "im 19. Jahrhundert", "der 2. Platz"
    if "." in word and word.replace(".", "").isalpha() and len(word) <= 8:
        parts = word.split(".")
        if all(len(part) == 1 and part.isupper() for part in parts):
            return False  # initials: "J.R.R. Tolkien"
        return _starts_with_capital(following)  # other dotted abbreviations ("e.V.", "U.S.A.")
    return not (rules == "de" and key.endswith("str"))  # street names: "Hauptstr. 5"


def _split_segment(segment: str, lang: str, case_tells: bool) -> list[str]:
    tokens = _TOKEN.findall(segment)
    pieces, start = [], 0
    for index in range(len(tokens) - 1):
        token = tokens[index]
        if token[-1] in _MAY_END and _ends_sentence(token, tokens[index + 1], lang, case_tells):
            pieces.append(" ".join(tokens[start:index + 1]))
            start = index + 1
    pieces.append(" ".join(tokens[start:]))
    return pieces


def _split_line(line: str, lang: str, case_tells: bool) -> list[str]:
    if not _FULL_WIDTH_END.search(line):
        return _split_segment(line, lang, case_tells)
    pieces, start = [], 0
    for end in _FULL_WIDTH_END.finditer(line):
        pieces.extend(_split_segment(line[start:end.end()], lang, case_tells))
        start = end.end()
    pieces.extend(_split_segment(line[start:], lang, case_tells))
    return pieces


def split_sentences(text: str, lang: str | None = None) -> list[str]:
    """Split ``text`` into sentences by the rules below; ``lang`` (ISO 639-1) picks the abbreviation rules.

    Lines:
    - Every non-empty line is its own segment, so a list item or heading without end punctuation is one
      sentence: "- apples\\n- pears" is 2.
    - A list/heading/quote marker at line start ("-", "*", "+", "•", "1.", "2)", "#", ">") is dropped first,
      so "1. First item" is one sentence.
    - A code-fence line (```` ``` ````, ```` ```json ````, ``~~~``) is not a sentence; a line inside a fence is.
    - A piece without any word character (a "---" rule, an emoji line) is not a sentence.
    Inside a line, a whitespace-separated token ends a sentence when it ends in an end mark, optionally followed
    by closing quotes, brackets or markdown emphasis:
    - A mark inside closing quotes followed by a word without a capital does not end the sentence:
      ``He asked, "Why?" and left.`` and ``She wrote 'Done.' on the board.`` are 1 each.
    - "?", "!" (and "?!", "!!!", "؟") end a sentence.
    - "...", "…" end a sentence only when the next word starts with a capital: "Wait... what?" is 1.
    - "." ends a sentence, except after an abbreviation of the response's language (``lang``; English when
      not given) that stands before a name or number ("Dr.", "Nr.", "z.B.", "p. ej.", "Sig.ra", "M."), a single
      letter ("J. K. Rowling", "z. B."; not the pronoun "i"), a day before a German month ("am 3. Oktober"),
      and, in German, a number of up to three digits (an ordinal: "im 19. Jahrhundert"). Abbreviations that
      also end sentences ("etc.", "U.S.", "p.m.", "usw.", "ecc.") end one when the next word starts with a capital.
      English "No.", "Fig.", "Vol." are abbreviations only before a number ("See No. 5"; "I said no. Then").
    - "。", "！", "？" end a sentence with or without a space after them.
    In text with no lowercase letter (an ALL-CAPS answer) a capital after a quote or "..." says nothing, so the
    sentence goes on there; after "ETC." or "P.M." a word still starts a new sentence. "3.5", "example.com" and
    "3:30" never split (no space after).
    IFEval counts with nltk's English Punkt model, which runs lines without end punctuation together, counts a
    list number ("1.") or a quoted question as a sentence of its own, and knows no other language's
    abbreviations; these are the differences results/ifeval_crosscheck/ classes.
    """
    language = (lang or "en").strip().lower()
    case_tells = text != text.upper()
    sentences: list[str] = []
    for line in filter(WORD.search, text.splitlines()):
        if _FENCE_LINE.fullmatch(line):
            continue
        marker = _LIST_OR_HEADING_MARKER.match(line)
        if marker:
            line = line[marker.end():]
        sentences.extend(piece for piece in _split_line(line, language, case_tells) if WORD.search(piece))
    return sentences


def count_sentences(text: str, lang: str | None = None) -> int:
    """Number of sentences by the rules of :func:`split_sentences`; 0 for empty text."""
    return len(split_sentences(text, lang))
