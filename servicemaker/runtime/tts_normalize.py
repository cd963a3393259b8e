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
  5. percentages, measures (kg, g, mg, km, m after a number only with a unit word list below, cm, mm, mi, mph,
     km/h, lb, oz, ml, °C, °F), ordinals (``21st``), years (a lone 1100–2099: "nineteen ninety", "two thousand
     one"), decimals (``3.14`` → "three point one four"; ``2.0.1`` → "two point zero point one"), grouped numbers (``1,000,000``), negative numbers, then
     every other run of digits as a cardinal (``221B`` → "two hundred twenty one B"; more than 15 digits are read
     one by one);
  6. ``&`` → "and", ``+`` → "plus", ``@`` → "at"; whitespace collapsed.

- :class:`Wfst`: Riva's and NeMo's WFST grammars (``--wfst_tokenizer_model`` / ``--wfst_verbalizer_model``: FAR
  files as NeMo text processing exports them), applied with pynini as NeMo's deterministic ``Normalizer`` applies
  them: the text through the classifier's shortest path, its ``tokens { ... }`` parsed, each token's fields
  permuted until the verbalizer accepts the string, then the verbalizer's shortest path.
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


class Builtin:
    """servicemaker's English rules (see the module's doc)."""

    def __init__(self, abbreviations: Optional[Dict[str, str]] = None) -> None:
        self.spell = _spell()
        table = dict(ABBREVIATIONS)
        table.update(abbreviations or {})
        # longer abbreviations first, so "Mrs." is not read as "Mr." + "s."
        keys = sorted(table, key=len, reverse=True)
        self.abbreviations = table
        self._abbr = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in keys) + r")(?![\w])") if keys else None
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
            (re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![\d.])"), self._decimal),
            (re.compile(r"(?<![\d.])\d+(?:\.\d+){2,}(?![\d])"),
             lambda m: " point ".join(self._cardinal(p) for p in m.group(0).split("."))),
            (re.compile(r"(?<![\d,])(\d{1,3}(?:,\d{3})+)(?![\d,])"), lambda m: self._cardinal(m.group(1))),
            (re.compile(r"(?:(?<=\s)|^)-(\d+)\b"), lambda m: f"minus {self._cardinal(m.group(1))}"),
            (re.compile(r"\d+"), lambda m: f" {self._cardinal(m.group(0))} "),
            (re.compile(r"\s*&\s*"), lambda m: " and "),
            (re.compile(r"(?<=\s)\+(?=\s)|(?<=\d)\+(?=\d)"), lambda m: " plus "),
            (re.compile(r"\s@\s"), lambda m: " at "),
        ]

    def __call__(self, text: str) -> str:
        if self._abbr is not None:
            text = self._abbr.sub(lambda m: self.abbreviations[m.group(1)], text)
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
MAX_PERMUTATIONS = 256


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


def parse_tokens(text: str) -> List[List[Tuple[str, object]]]:
    """The classifier's ``tokens { name: "a" } tokens { money { integer_part: "5" } }`` as a list of tokens,
    each a list of (key, value) pairs in order; a value is a string or a nested list of pairs."""
    pos = 0

    def skip() -> None:
        nonlocal pos
        while pos < len(text) and text[pos] == " ":
            pos += 1

    def key() -> str:
        nonlocal pos
        skip()
        start = pos
        while pos < len(text) and (text[pos].isalnum() or text[pos] == "_"):
            pos += 1
        if start == pos:
            raise NormalizerError(f"cannot parse the classifier's output at {pos}: {text[pos:pos + 40]!r}")
        return text[start:pos]

    def string() -> str:
        nonlocal pos
        skip()
        if pos >= len(text) or text[pos] != '"':
            raise NormalizerError(f"cannot parse the classifier's output at {pos}: expected a quoted value")
        pos += 1
        out = []
        while pos < len(text) and text[pos] != '"':
            if text[pos] == "\\" and pos + 1 < len(text):
                pos += 1
            out.append(text[pos])
            pos += 1
        if pos >= len(text):
            raise NormalizerError("cannot parse the classifier's output: an unterminated value")
        pos += 1
        return "".join(out)

    def fields() -> List[Tuple[str, object]]:
        nonlocal pos
        items: List[Tuple[str, object]] = []
        while True:
            skip()
            if pos >= len(text) or text[pos] == "}":
                return items
            name = key()
            skip()
            if pos < len(text) and text[pos] == ":":
                pos += 1
                items.append((name, string()))
            elif pos < len(text) and text[pos] == "{":
                pos += 1
                items.append((name, fields()))
                skip()
                if pos >= len(text) or text[pos] != "}":
                    raise NormalizerError("cannot parse the classifier's output: an unclosed '{'")
                pos += 1
            else:
                raise NormalizerError(f"cannot parse the classifier's output at {pos}: {text[pos:pos + 40]!r}")

    tokens: List[List[Tuple[str, object]]] = []
    for name, value in fields():
        if name != "tokens" or not isinstance(value, list):
            raise NormalizerError(f"the classifier gave {name!r} where 'tokens {{ ... }}' was expected")
        tokens.append(value)
    if pos != len(text):
        raise NormalizerError(f"cannot parse the classifier's output at {pos}: {text[pos:pos + 40]!r}")
    return tokens


def _render(items: List[Tuple[str, object]]) -> str:
    out = []
    for name, value in items:
        if isinstance(value, list):
            out.append(f"{name} {{ {_render(value)} }}")
        else:
            escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{name}: "{escaped}"')
    return " ".join(out)


def _orders(items: List[Tuple[str, object]]) -> Iterator[List[Tuple[str, object]]]:
    """Every order of a token's fields (nested fields too), ``preserve_order`` ones kept as written first."""
    import itertools

    if any(name == "preserve_order" for name, _ in items):
        yield items
        return
    nested = [[(n, o) for o in _orders(v)] if isinstance(v, list) else [(n, v)] for n, v in items]
    for choice in itertools.product(*nested):
        for perm in itertools.permutations(choice):
            yield list(perm)


class Wfst:
    """The classifier and verbalizer grammars applied as NeMo's deterministic Normalizer applies them."""

    def __init__(self, classify: str, verbalize: str) -> None:
        self.pynini = _pynini()
        self.classify = load_far(classify, CLASSIFY_RULES, "the WFST tokenizer model")
        self.verbalize = load_far(verbalize, VERBALIZE_RULES, "the WFST verbalizer model")

    def _shortest(self, text: str, fst) -> Optional[str]:
        pynini = self.pynini
        lattice = pynini.compose(pynini.accep(pynini.escape(text)), fst)
        if lattice.num_states() == 0:
            return None
        return pynini.shortestpath(lattice, nshortest=1, unique=True).string()

    def __call__(self, text: str) -> str:
        text = text.strip()
        if not text:
            return text
        tagged = self._shortest(text, self.classify)
        if tagged is None:
            raise NormalizerError("the WFST tokenizer model does not accept this text")
        out = []
        for token in parse_tokens(tagged):
            spoken = None
            for k, order in enumerate(_orders(token)):
                if k >= MAX_PERMUTATIONS:
                    break
                spoken = self._shortest(f"tokens {{ {_render(order)} }}", self.verbalize)
                if spoken is not None:
                    break
            if spoken is None:
                raise NormalizerError(f"the WFST verbalizer model accepts no order of the token "
                                      f"{_render(token)[:80]!r}")
            out.append(spoken)
        return " ".join(" ".join(out).split())


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
        table = Builtin(abbreviations)  # the abbreviations file still applies, before the grammars
        return lambda text: wfst(table._abbr.sub(lambda m: table.abbreviations[m.group(1)], text)
                                 if table._abbr else text)
    if kind != "builtin":
        raise NormalizerError(f"unknown text normalization {kind!r}")
    return Builtin(abbreviations)
