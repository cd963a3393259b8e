"""TTS text normalization: written forms (numbers, money, dates, times, abbreviations) → spoken words.

svc-deploy copies this file into the TTS preprocessor's model folder as ``svc_tts_normalize.py``. Two normalizers:

- :class:`Builtin` (the default): English rules of servicemaker's own, the numbers spelled by ``num2words`` (a
  maintained library; imported when first needed), written to read as NeMo's English normalizer does on common
  inputs. In this order, each on what the rules before it left:

  1. abbreviations: the ``abbreviations_file`` (``abbr<TAB>expansion`` per line; the first whitespace separates
     them where there is no tab), then Mr., Mrs., Ms., Dr., Prof., Jr., Sr., vs., etc., e.g., i.e. (whole words,
     as written);
  2. money: ``$``, ``€``, ``£``, ``¥`` amounts with cents or pence and an optional thousand/million/billion
     (``$5.20`` → "five dollars twenty cents");
  3. times: ``10:30 am`` → "ten thirty AM", ``9 pm``, ``10:05`` → "ten oh five", ``10:00`` → "ten o'clock";
  4. dates: ``12/25/1990`` (month first) and ``Jan. 3, 2024`` / ``January 3rd`` → "january third, twenty twenty
     four";
  5. percentages, measures after a number (kg, g, mg, km, cm, mm, mi, mph, km/h, lb, oz, ml, °C, °F), ordinals
     (``21st``), years (a lone 1100–2099: "nineteen ninety", "two thousand one"), decimals (``3.14`` → "three
     point one four"; ``2.0.1`` → "two point zero point one"), grouped numbers (``1,000,000``), negative numbers,
     then every other run of digits as a cardinal (``221B`` → "two hundred twenty one B"; more than 15 digits are
     read one by one);
  6. ``&`` → "and", ``+`` → "plus", ``@`` → "at"; whitespace collapsed.

- :class:`Wfst`: Riva's and NeMo's WFST grammars (``--wfst_tokenizer_model`` / ``--wfst_verbalizer_model``: FAR
  files as NeMo text processing exports them), applied with pynini as NeMo's deterministic ``Normalizer`` applies
  them: the text through the classifier's shortest path, its ``tokens { ... }`` parsed as NeMo's TokenParser does,
  runs of tokens (at most 729 field orders each) serialized in each order until the verbalizer accepts one, its
  shortest path. NeMo's optional post-processing grammar and Moses detokenizer are not run: spaces before
  punctuation and inside brackets are removed instead.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Iterator, List, Optional, Tuple

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_MONTH_ABBR = {m[:3]: i for i, m in enumerate(MONTHS)}
_MONTH_ABBR["sept"] = 8
ABBREVIATIONS = {"Mr.": "mister", "Mrs.": "misses", "Ms.": "miss", "Dr.": "doctor", "Prof.": "professor",
                 "Jr.": "junior", "Sr.": "senior", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
                 "i.e.": "that is"}
CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
              "£": ("pound", "pounds", "penny", "pence"), "¥": ("yen", "yen", "sen", "sen")}
UNITS = {"kg": "kilograms", "g": "grams", "mg": "milligrams", "km": "kilometers", "cm": "centimeters",
         "mm": "millimeters", "mi": "miles", "mph": "miles per hour", "km/h": "kilometers per hour",
         "kph": "kilometers per hour", "lb": "pounds", "lbs": "pounds", "oz": "ounces", "ml": "milliliters",
         "°C": "degrees celsius", "°F": "degrees fahrenheit"}
SINGULAR_UNITS = {"kilograms": "kilogram", "grams": "gram", "milligrams": "milligram", "kilometers": "kilometer",
                  "centimeters": "centimeter", "millimeters": "millimeter", "miles": "mile", "pounds": "pound",
                  "ounces": "ounce", "milliliters": "milliliter", "degrees celsius": "degree celsius",
                  "degrees fahrenheit": "degree fahrenheit"}
SCALES = ("thousand", "million", "billion", "trillion")
MAX_CARDINAL_DIGITS = 15


class NormalizerError(ValueError):
    """Text the normalizer cannot handle, or grammars it cannot load (the message names which)."""


def read_abbreviations(path: str) -> Dict[str, str]:
    """An abbreviations file: ``abbr<TAB>expansion`` per line (or the first whitespace); ``#`` starts a comment."""
    out: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            abbr, _, expansion = line.partition("\t") if "\t" in line else line.strip().partition(" ")
            if not abbr.strip() or not expansion.strip():
                raise NormalizerError(f"{path}, line {number}: expected 'abbreviation<TAB>expansion', got "
                                      f"{line.strip()[:60]!r}")
            out[abbr.strip()] = " ".join(expansion.split())
    return out


def _spell() -> Callable[..., str]:
    try:
        from num2words import num2words
    except ImportError:
        raise NormalizerError("the built-in text normalizer needs num2words: pip install num2words") from None
    return num2words


def _words(text: str) -> str:
    """num2words' English spelled the way NeMo's normalizer reads: no 'and', no hyphens or commas."""
    text = text.replace("-", " ").replace(",", "")
    return " ".join(w for w in text.split() if w != "and")


class Abbreviations:
    """Whole-word abbreviations (as written) replaced by their expansions, longer ones first ("Mrs." is not "Mr."
    and "s.")."""

    def __init__(self, table: Dict[str, str]) -> None:
        self.table = dict(table)
        keys = sorted(self.table, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])") \
            if keys else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(lambda m: self.table[m.group(1)], text) if self._pattern else text


class Builtin:
    """servicemaker's English rules (see the module's doc)."""

    def __init__(self, abbreviations: Optional[Dict[str, str]] = None) -> None:
        self.spell = _spell()
        self.abbreviations = Abbreviations({**ABBREVIATIONS, **(abbreviations or {})})
        self._rules: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
            (re.compile(r"([$€£¥])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(?:\s?(thousand|million|billion|"
                        r"trillion)\b)?"), self._money),
            (re.compile(r"\b(\d{1,2}):(\d{2})\s?([AaPp])\.?[Mm]\.?(?![\w])"), self._clock),
            (re.compile(r"\b(\d{1,2})\s?([AaPp])\.?[Mm]\.?(?![\w])"), self._hour),
            (re.compile(r"\b(\d{1,2}):(\d{2})\b"), self._clock),
            (re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b"), self._numeric_date),
            (re.compile(r"\b(" + "|".join(m.capitalize() for m in MONTHS) + r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept|Sep|"
                        r"Oct|Nov|Dec)\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b(,?\s*(\d{4})\b)?"), self._date),
            (re.compile(r"(\d+(?:\.\d+)?)\s?%"), lambda m: f"{self._number(m.group(1))} percent"),
            (re.compile(r"(\d+(?:\.\d+)?)\s?(" + "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
                        + r")(?![\w/])"), self._measure),
            (re.compile(r"\b(\d+)(st|nd|rd|th)\b"), lambda m: self._ordinal(int(m.group(1)))),
            (re.compile(r"(?<![\d.,])(1[1-9]\d\d|20\d\d)(?![\d,]|\.\d)"), lambda m: self._year(int(m.group(1)))),
            (re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])"), lambda m: f" {self._decimal(m)} "),
            (re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d])"),
             lambda m: " " + " point ".join(self._cardinal(p) for p in m.group(0).split(".")) + " "),
            (re.compile(r"(?<![\d,])(\d{1,3}(?:,\d{3})+)(?![\d,])"), lambda m: self._cardinal(m.group(1))),
            (re.compile(r"(?:(?<=\s)|^)-(\d+)\b"), lambda m: f"minus {self._cardinal(m.group(1))}"),
            (re.compile(r"\d+"), lambda m: f" {self._cardinal(m.group(0))} "),
            (re.compile(r"\s*&\s*"), lambda m: " and "),
            (re.compile(r"(?<=\s)\+(?=\s)|(?<=\d)\+(?=\d)"), lambda m: " plus "),
            (re.compile(r"\s@\s"), lambda m: " at "),
        ]

    def __call__(self, text: str) -> str:
        text = self.abbreviations(text)
        for pattern, replace in self._rules:
            text = pattern.sub(replace, text)
        text = re.sub(r"[ \t]+", " ", text)
        return re.sub(r" ([,.!?;:])", r"\1", text).strip()

    # -- numbers ----------------------------------------------------------------------------------------------------
    def _cardinal(self, digits: str) -> str:
        digits = digits.replace(",", "")
        if len(digits.lstrip("0")) > MAX_CARDINAL_DIGITS:
            return " ".join(_words(self.spell(int(d))) for d in digits)
        return _words(self.spell(int(digits)))

    def _ordinal(self, n: int) -> str:
        return _words(self.spell(n, to="ordinal"))

    def _year(self, n: int) -> str:
        return _words(self.spell(n, to="year"))

    def _number(self, text: str) -> str:
        whole, _, frac = text.partition(".")
        return self._cardinal(whole) + (" point " + " ".join(self._cardinal(d) for d in frac) if frac else "")

    def _decimal(self, m: re.Match) -> str:
        return self._number(f"{m.group(1)}.{m.group(2)}")

    def _measure(self, m: re.Match) -> str:
        unit = UNITS[m.group(2)]
        if m.group(1) in ("1", "1.0"):
            unit = SINGULAR_UNITS.get(unit, unit)
        return f"{self._number(m.group(1))} {unit}"

    def _money(self, m: re.Match) -> str:
        one, many, cent, cents = CURRENCIES[m.group(1)]
        whole, frac, scale = m.group(2).replace(",", ""), m.group(3), m.group(4)
        if scale:
            amount = self._number(whole + ("." + frac if frac else ""))
            return f"{amount} {scale} {many}"
        units = int(whole)
        parts = []
        if units or not frac:
            parts.append(f"{self._cardinal(whole)} {one if units == 1 else many}")
        if frac:
            small = int(frac.ljust(2, "0"))
            if small:
                parts.append(f"{self._cardinal(str(small))} {cent if small == 1 else cents}")
        return " ".join(parts)

    # -- times and dates ----------------------------------------------------------------------------------------------
    def _clock(self, m: re.Match) -> str:
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 24 or minute > 59:
            return m.group(0)
        suffix = f" {m.group(3).upper()}M{_end_dot(m)}" if m.lastindex and m.lastindex >= 3 and m.group(3) else ""
        if minute == 0:
            spoken = self._cardinal(str(hour)) + ("" if suffix else " o'clock")
        elif minute < 10:
            spoken = f"{self._cardinal(str(hour))} oh {self._cardinal(str(minute))}"
        else:
            spoken = f"{self._cardinal(str(hour))} {self._cardinal(str(minute))}"
        return spoken + suffix

    def _hour(self, m: re.Match) -> str:
        hour = int(m.group(1))
        return f"{self._cardinal(str(hour))} {m.group(2).upper()}M{_end_dot(m)}" if 0 < hour <= 12 else m.group(0)

    def _numeric_date(self, m: re.Match) -> str:
        month, day, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return m.group(0)
        return f"{MONTHS[month - 1]} {self._ordinal(day)} {self._year(year)}"

    def _date(self, m: re.Match) -> str:
        name = m.group(1).lower()
        month = MONTHS.index(name) if name in MONTHS else _MONTH_ABBR[name]
        day = int(m.group(2))
        if not 1 <= day <= 31:
            return m.group(0)
        spoken = f"{MONTHS[month]} {self._ordinal(day)}"
        if m.group(4):
            spoken += ("," if "," in m.group(3) else "") + f" {self._year(int(m.group(4)))}"
        return spoken


def _end_dot(m: re.Match) -> str:
    """"." when ``a.m.``/``pm.`` ended a sentence: the abbreviation's dot was also the full stop."""
    rest = m.string[m.end():].lstrip()
    return "." if m.group(0).endswith(".") and (not rest or rest[0].isupper()) else ""


# --- WFST grammars (pynini) --------------------------------------------------------------------------------------------

#: the rule of each grammar, by the names NeMo's exports and Sparrowhawk's give it
CLASSIFY_RULES = ("tokenize_and_classify", "TOKENIZE_AND_CLASSIFY")
VERBALIZE_RULES = ("verbalize", "ALL")


def _pynini():
    try:
        import pynini
    except ImportError:
        raise NormalizerError("WFST text normalization needs pynini: pip install pynini") from None
    return pynini


def load_far(path: str, rules: Tuple[str, ...], role: str):
    """The grammar of a FAR file: the rule among ``rules``, or its only one."""
    pynini = _pynini()
    try:
        far = pynini.Far(path, mode="r")
        found = {}
        while not far.done():
            found[far.get_key()] = far.get_fst()
            far.next()
    except Exception as err:  # noqa: BLE001 - pynini raises several types for a bad file
        raise NormalizerError(f"{role} {path} is not a readable FAR grammar ({type(err).__name__}); export it with "
                              "NeMo text processing") from None
    for rule in rules:
        if rule in found:
            return found[rule]
    if len(found) == 1:
        return next(iter(found.values()))
    raise NormalizerError(f"{role} {path} has rules {', '.join(sorted(found)) or 'none'}; expected one of "
                          f"{', '.join(rules)}")


MAX_PERMUTATIONS_PER_SPLIT = 729   # NeMo's Normalizer default
_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
Token = Dict[str, object]   # key → str | bool | Token, in order


def parse_tokens(text: str) -> List[Token]:
    """The classifier's output (``tokens { name: "a" } tokens { money { integer_part: "5" } }``) as NeMo's
    TokenParser reads it: one ordered dict per top-level item; keys are ASCII letters and ``_``; a value is a string
    (ending at a quote followed by a space), ``true`` after ``preserve_order``, or nested items (flattened into one
    dict)."""
    pos, n = 0, len(text)

    def ws() -> bool:
        nonlocal pos
        while pos < n and text[pos] == " ":
            pos += 1
        return pos < n

    def expect(ch: str) -> None:
        nonlocal pos
        if pos >= n or text[pos] != ch:
            raise NormalizerError(f"cannot parse the WFST classifier's output at {pos}: expected {ch!r} in "
                                  f"{text[max(0, pos - 20):pos + 20]!r}")
        pos += 1

    def items() -> List[Token]:
        nonlocal pos
        out: List[Token] = []
        while ws():
            start = pos
            key = key_()
            if key is None:
                break
            ws()
            if key == "preserve_order":
                expect(":")
                ws()
                for ch in "true":
                    expect(ch)
                out.append({key: True})
            elif pos < n and text[pos] == ":":
                expect(":")
                ws()
                expect('"')
                begin = pos
                while pos < n and not (text[pos] == '"' and pos + 1 < n and text[pos + 1] == " "):
                    pos += 1
                if pos >= n:
                    raise NormalizerError("cannot parse the WFST classifier's output: a value without its end")
                out.append({key: text[begin:pos]})
                expect('"')
            elif pos < n and text[pos] == "{":
                expect("{")
                merged: Token = {}
                for item in items():
                    merged.update(item)
                ws()
                expect("}")
                out.append({key: merged})
            else:
                raise NormalizerError(f"cannot parse the WFST classifier's output at {start}: "
                                      f"{text[start:start + 40]!r}")
        return out

    def key_() -> Optional[str]:
        nonlocal pos
        begin = pos
        while pos < n and text[pos] in _KEY_CHARS:
            pos += 1
        return text[begin:pos] or None

    tokens = items()
    if ws():
        raise NormalizerError(f"cannot parse the WFST classifier's output at {pos}: {text[pos:pos + 40]!r}")
    return tokens


def _permutations_of(token: Token) -> int:
    from math import factorial

    count = 1
    for value in token.values():
        if isinstance(value, dict):
            count *= _permutations_of(value)
    return count * factorial(len(token))


def _splits(tokens: List[Token]) -> List[List[Token]]:
    """Runs of tokens whose orders to try multiply to at most :data:`MAX_PERMUTATIONS_PER_SPLIT` (NeMo's)."""
    out, start, current = [], 0, 1
    for i, token in enumerate(tokens):
        count = _permutations_of(token)
        if count * current > MAX_PERMUTATIONS_PER_SPLIT:
            out.append(tokens[start:i])
            start, current = i, 1
        if count > MAX_PERMUTATIONS_PER_SPLIT:
            raise NormalizerError(f"a token has {count} orders to try, more than {MAX_PERMUTATIONS_PER_SPLIT}")
        current *= count
    out.append(tokens[start:])
    return [s for s in out if s]


def _serializations(token: Token) -> List[str]:
    """Every serialization of ``token`` in NeMo's form (``key: "value" ``, `` key { ... } ``, ``key: true ``), its
    items permuted unless it has ``preserve_order``."""
    import itertools

    orders = [list(token.items())] if "preserve_order" in token else itertools.permutations(token.items())
    out: List[str] = []
    for order in orders:
        partial = [""]
        for key, value in order:
            if isinstance(value, bool):
                parts = [f"{key}: true "]
            elif isinstance(value, dict):
                parts = [f" {key} {{ {inner} }} " for inner in _serializations(value)]
            else:
                parts = [f'{key}: "{value}" ']
            partial = [a + b for a in partial for b in parts]
        out.extend(partial)
    return out


def _sequences(tokens: List[Token], prefix: str = "") -> Iterator[str]:
    if not tokens:
        yield prefix
        return
    for option in _serializations(tokens[0]):
        yield from _sequences(tokens[1:], prefix + option)


def attach_punctuation(text: str) -> str:
    """Spaces before ``!,.:;?`` and inside brackets removed, doubled spaces collapsed (where NeMo's
    ``punct_post_process`` runs the Moses detokenizer)."""
    for a, b in (("( ", "("), (" )", ")"), ("{ ", "{"), (" }", "}"), ("[ ", "["), (" ]", "]")):
        text = text.replace(a, b)
    text = re.sub(r" {2,}", " ", text)
    return re.sub(r" ([!,.:;?])", r"\1", text).strip()


class Wfst:
    """The classifier and verbalizer grammars applied as NeMo's deterministic ``Normalizer.normalize`` applies them
    (brackets spaced first, as its ``punct_pre_process``; punctuation attached after, see
    :func:`attach_punctuation`)."""

    def __init__(self, classify: str, verbalize: str) -> None:
        self.pynini = _pynini()
        self.classify = load_far(classify, CLASSIFY_RULES, "the WFST tokenizer model")
        self.verbalize = load_far(verbalize, VERBALIZE_RULES, "the WFST verbalizer model")

    def _lattice(self, text: str, fst):
        pynini = self.pynini
        return pynini.compose(pynini.accep(pynini.escape(text)), fst)

    def core(self, text: str) -> str:
        """NeMo's algorithm: tag, parse, verbalize each run of tokens in the first order the verbalizer accepts."""
        pynini = self.pynini
        text = text.strip()
        if not text:
            return text
        tagged = self._lattice(text, self.classify)
        if tagged.num_states() == 0:
            raise NormalizerError("the WFST tokenizer model does not accept this text")
        tagged_text = pynini.shortestpath(tagged, nshortest=1, unique=True).string()
        output = ""
        for split in _splits(parse_tokens(tagged_text)):
            lattice = None
            for serialized in _sequences(split):
                lattice = self._lattice(serialized, self.verbalize)
                if lattice.num_states() != 0:
                    break
            if lattice is None or lattice.num_states() == 0:
                raise NormalizerError("the WFST verbalizer model accepts no order of the classifier's tokens")
            output += " " + pynini.shortestpath(lattice, nshortest=1, unique=True).string()
        return re.sub(r" {2,}", " ", output[1:])

    def __call__(self, text: str) -> str:
        for bracket in "[]":
            text = text.replace(bracket, f" {bracket} ")
        return attach_punctuation(self.core(re.sub(r" +", " ", text)))


def create(kind: str, abbreviations: Optional[Dict[str, str]] = None, classify: Optional[str] = None,
           verbalize: Optional[str] = None) -> Callable[[str], str]:
    """The normalizer ``kind`` (``builtin``, ``wfst``, ``none``; ``auto``: wfst when both grammars are given)."""
    if kind == "auto":
        kind = "wfst" if classify and verbalize else "builtin"
    if kind == "none":
        return lambda text: text
    if kind == "wfst":
        if not (classify and verbalize):
            raise NormalizerError("text_normalization=wfst needs both --wfst_tokenizer_model and "
                                  "--wfst_verbalizer_model")
        wfst = Wfst(classify, verbalize)
        if not abbreviations:
            return wfst
        expand = Abbreviations(abbreviations)  # the abbreviations file applies before the grammars
        return lambda text: wfst(expand(text))
    if kind != "builtin":
        raise NormalizerError(f"unknown text normalization {kind!r}")
    return Builtin(abbreviations)
