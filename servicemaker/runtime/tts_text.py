"""The TTS text front end after normalization: sentence splitting, and symbol ids exactly as NeMo's TTS tokenizers
compute them.

svc-deploy copies this file into the TTS Python-backend model folders as ``svc_tts_text.py`` (beside
``svc_handlers.py``, :mod:`.tts`); it imports only the standard library. svc-deploy itself uses it too (sample
sentences for the compiler, the symbol table checked against nemo2riva's ``mapping.txt``).

Tokenizers, built from the ``text_tokenizer`` section of FastPitch's ``model_config.yaml`` (:func:`from_config`),
with NeMo's defaults for every key the section omits:

- ``EnglishCharsTokenizer``: the text is preprocessed as NeMo's ``english_text_preprocessing`` (NFD, combining marks
  dropped, ’ → ', “ ” → ", lower-cased); symbols are space, a–z, the apostrophe (``apostrophe``), the punctuation
  list (``punct``, ``non_default_punct_list``), then ``<pad>``, ``<blank>`` (``add_blank_at``), ``<oov>``. A
  whitespace is kept only after a non-space; a character that is not a symbol is skipped; trailing spaces are
  dropped; ``pad_with_space`` wraps the ids in a space each side.
- ``EnglishPhonemesTokenizer`` with NeMo's ``EnglishG2p`` (ARPAbet, a CMUdict-format dictionary read as latin-1):
  words as NeMo's ``english_word_tokenize`` splits them (lower-cased; ``|...|`` spans pass unchanged), then per word:
  a heteronym stays graphemes; ``'s`` and ``s`` suffixes of dictionary words; the dictionary (an ambiguous word stays
  graphemes when ``ignore_ambiguous_words``); else graphemes; words of hyphenated parts not found whole are looked up
  part by part. Stresses are cut (``AH0`` → ``AH``) unless ``stresses``; graphemes are symbols only when ``chars``
  (or the config sets ``phoneme_probability``); others are skipped.
- ``IPATokenizer`` with NeMo's ``IpaG2p`` (en-US): a dictionary of IPA strings (one symbol per character, stress
  marks kept per ``use_stresses``), graphemes in ``grapheme_case`` with ``grapheme_prefix``; the symbol table is the
  sorted set of the dictionary's symbols (and graphemes with ``use_chars``), apostrophe, punctuation, then space if
  absent, ``<pad>``, ``<oov>``.

At inference NeMo phonemizes every word it can (``parse()`` sets the phoneme probability to 1.0): so does this.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PAD, BLANK, OOV = "<pad>", "<blank>", "<oov>"
#: NeMo's DEFAULT_PUNCTUATION, in its order
DEFAULT_PUNCTUATION = (",", ".", "!", "?", "-", ":", ";", "/", '"', "(", ")", "[", "]", "{", "}")
_SYNOGLYPHS = {"’": "'", "”": '"', "“": '"'}
_TOKENIZERS = "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers."
_OLD_TOKENIZERS = "nemo.collections.tts.torch.tts_tokenizers."
CHARS, ARPABET, IPA = "EnglishCharsTokenizer", "EnglishPhonemesTokenizer", "IPATokenizer"
ARPABET_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
ARPABET_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T",
                      "TH", "V", "W", "Y", "Z", "ZH")
IPA_STRESSES = ("ˈ", "ˌ")
# NeMo's word characters for English: basic Latin letters; hyphens and apostrophes inside words
_LATIN = "A-Za-z"
_WORDS_EN = re.compile(rf"([{_LATIN}]+(?:[{_LATIN}\-']*[{_LATIN}]+)*)|(\|[^|]*\|)|([^{_LATIN}|]+)")
# IpaG2p's test for "has a word character" (Latin with accents, Indic, Korean, digits)
_WORD_CHARS_ALL = ("A-Za-zÀ-ÖØ-öø-ÿ\u0900-\u0963\u0966-\u097F\u0980-\u09FF\u0B80-\u0BFF\u0C00-\u0C7F\u0C80-\u0CFF"
                   "\u0A80-\u0AFF\uAC00-\uD7A3\u1100-\u11FF\u3130-\u318F")
_IPA_CHAR = re.compile(rf"[{_WORD_CHARS_ALL}\d]")
_IPA_PUNCT = re.compile(rf"[^{_WORD_CHARS_ALL}\d]")
_ARPABET_WORD = re.compile(r"[a-zA-ZÀ-ÿ\d]")
_ALT = re.compile(r"\([0-9]+\)")


class TokenizerError(ValueError):
    """A tokenizer configuration servicemaker cannot reproduce, or a dictionary it cannot read."""


# --- text preprocessing as NeMo's tokenizers do it ------------------------------------------------------------------

def english_preprocess(text: str, lower: bool = True) -> str:
    """NeMo's ``english_text_preprocessing``."""
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = "".join(_SYNOGLYPHS.get(c, c) for c in text)
    return text.lower() if lower else text


def nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def english_words(text: str) -> List[Tuple[List[str], bool]]:
    """NeMo's ``english_word_tokenize``: (pieces, unchanged) per word, ``|...|`` span or run of other characters;
    words are lower-cased."""
    out: List[Tuple[List[str], bool]] = []
    for word, unchanged, other in _WORDS_EN.findall(text):
        if word:
            out.append(([word.lower()], False))
        elif other:
            out.append(([other], False))
        else:
            out.append((unchanged[1:-1].split(" "), True))
    return out


# --- dictionaries ----------------------------------------------------------------------------------------------------

def read_cmudict(path: str, encoding: str = "latin-1") -> Dict[str, List[List[str]]]:
    """A CMUdict-format ARPAbet dictionary as EnglishG2p reads it: lines starting with A–Z or ``'``; ``WORD(2)``
    alternates merged under ``word``; word and pronunciation separated by two spaces."""
    out: Dict[str, List[List[str]]] = {}
    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            if line and ("A" <= line[0] <= "Z" or line[0] == "'"):
                parts = line.split("  ")
                if len(parts) < 2:
                    raise TokenizerError(f"{path}, line {number}: expected 'WORD  PHONES' (two spaces between), "
                                         f"got {line.strip()[:60]!r}")
                word = _ALT.sub("", parts[0]).lower()
                out.setdefault(word, []).append(parts[1].strip().split(" "))
    return out


def read_ipa_dict(path: str) -> Dict[str, List[List[str]]]:
    """An IPA dictionary as IpaG2p reads it (UTF-8, NFC): ``WORD<whitespace>PRONUNCIATION``, every character of the
    pronunciation (whitespace removed) one symbol."""
    out: Dict[str, List[List[str]]] = {}
    starts = re.compile(rf"^[A-Za-zÀ-ÖØ-öø-ÿ'\u0900-\u0963\u0966-\u097F\u0980-\u09FF\u0B80-\u0BFF\u0C00-\u0C7F"
                        rf"\u0C80-\u0CFF\u0A80-\u0AFF\uAC00-\uD7A3\u1100-\u11FF\u3130-\u318F]")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line:
                continue
            line = nfc(line)
            if starts.match(line[0]):
                parts = line.strip().split(maxsplit=1)
                if len(parts) < 2:
                    raise TokenizerError(f"{path}, line {number}: expected 'WORD PRONUNCIATION', got "
                                         f"{line.strip()[:60]!r}")
                out.setdefault(_ALT.sub("", parts[0]), []).append(list(re.sub(r"\s+", "", parts[1])))
    return out


def read_lines(path: str, encoding: str = "latin-1") -> List[str]:
    with open(path, encoding=encoding) as f:
        return [line.rstrip() for line in f]


# --- G2P ---------------------------------------------------------------------------------------------------------------

def _phonemize(words: List[Tuple[List[str], bool]], word: Callable[[str], Tuple[List[str], bool]], prefix: str
               ) -> List[str]:
    """Both NeMo G2Ps' loop: unchanged spans as they are (``prefix`` before each), every other word through
    ``word``; a word it did not handle that has hyphens, part by part, the hyphens kept."""
    out: List[str] = []
    for pieces, unchanged in words:
        if unchanged:
            out.extend(f"{prefix}{p}" for p in pieces)
            continue
        pron, handled = word(pieces[0])
        if not handled and "-" in pieces[0]:
            pron = []
            for part in pieces[0].split("-"):
                pron.extend(word(part)[0])
                pron.append("-")
            pron.pop()
        out.extend(pron)
    return out


class ArpabetG2p:
    """NeMo's EnglishG2p at inference (every word it can phonemize is phonemized)."""

    def __init__(self, phoneme_dict: Dict[str, List[List[str]]], heteronyms: Iterable[str] = (),
                 ignore_ambiguous_words: bool = True) -> None:
        self.dict = phoneme_dict
        self.heteronyms = set(heteronyms)
        self.ignore_ambiguous = ignore_ambiguous_words

    def _unique(self, word: str) -> bool:
        return len(self.dict[word]) == 1

    def _known(self, word: str) -> bool:
        return word in self.dict and (not self.ignore_ambiguous or self._unique(word))

    def word(self, word: str) -> Tuple[List[str], bool]:
        if _ARPABET_WORD.search(word) is None:        # punctuation or whitespace
            return list(word), True
        if word in self.heteronyms:
            return list(word), True
        if len(word) > 2 and word.endswith("'s") and word not in self.dict and self._known(word[:-2]):
            return self.dict[word[:-2]][0] + ["Z"], True
        if len(word) > 1 and word.endswith("s") and word not in self.dict and self._known(word[:-1]):
            return self.dict[word[:-1]][0] + ["Z"], True
        if self._known(word):
            return self.dict[word][0], True
        return list(word), False

    def __call__(self, text: str) -> List[str]:
        return _phonemize(english_words(text), self.word, "")


class IpaG2p:
    """NeMo's IpaG2p for en-US at inference."""

    def __init__(self, phoneme_dict: Dict[str, List[List[str]]], heteronyms: Iterable[str] = (),
                 ignore_ambiguous_words: bool = True, use_chars: bool = False, use_stresses: bool = True,
                 grapheme_case: str = "upper", grapheme_prefix: str = "") -> None:
        if grapheme_case not in ("upper", "lower", "mixed"):
            raise TokenizerError(f"g2p.grapheme_case={grapheme_case!r}: expected upper, lower or mixed")
        self.case, self.prefix = grapheme_case, grapheme_prefix
        self.use_chars, self.ignore_ambiguous = use_chars, ignore_ambiguous_words
        self.dict: Dict[str, List[List[str]]] = {}
        self.symbols: set = set()
        for word, prons in phoneme_dict.items():
            cased = self._cased(word)
            if use_chars:
                self.symbols.update(self._graphemes(_IPA_PUNCT.sub("", cased)))
            if not use_stresses:
                prons = [[s for s in p if s not in IPA_STRESSES] for p in prons]
            for pron in prons:
                self.symbols.update(pron)
            self.dict[cased] = prons
            if self.case == "mixed" and not cased.isupper():
                self.dict[cased.upper()] = prons
        if not self.dict:
            raise TokenizerError("the IPA phone dictionary has no entries")
        self.heteronyms = {self._cased(h) for h in heteronyms}

    def _cased(self, text: str) -> str:
        return text.upper() if self.case == "upper" else text.lower() if self.case == "lower" else text

    def _graphemes(self, word: str) -> List[str]:
        return [f"{self.prefix}{c}" for c in word]

    def _found(self, word: str) -> Optional[str]:
        """``word`` or its upper case, when absent themselves... as IpaG2p's suffix rules look stems up."""
        if word in self.dict:
            return word
        if word.upper() in self.dict:
            return word.upper()
        return None

    def _usable(self, word: str) -> bool:
        return not self.ignore_ambiguous or len(self.dict[word]) == 1

    def word(self, word: str) -> Tuple[List[str], bool]:
        word = self._cased(word)
        if _IPA_CHAR.search(word) is None:
            return list(word), True
        if word in self.heteronyms:
            return self._graphemes(word), True
        absent = word not in self.dict and word.upper() not in self.dict
        if len(word) > 2 and word[-2:] in ("'s", "'S") and absent:
            stem = self._found(word[:-2])
            if stem is not None and self._usable(stem):
                tail = ["s"] if stem[-1] in "Tt" else ["ɪ", "z"] if stem[-1] in "Ss" else ["z"]
                return self.dict[stem][0] + tail, True
        if len(word) > 1 and word[-1] in "sS" and absent:
            stem = self._found(word[:-1])
            if stem is not None and self._usable(stem):
                return self.dict[stem][0] + (["s"] if stem[-1] in "Tt" else ["z"]), True
        if word in self.dict and self._usable(word):
            return self.dict[word][0], True
        if self.case == "mixed" and word not in self.dict and word.upper() in self.dict:
            if self._usable(word.upper()):
                return self.dict[word.upper()][0], True
        return self._graphemes(word), False

    def __call__(self, text: str) -> List[str]:
        return _phonemize(english_words(nfc(text)), self.word, self.prefix)


# --- tokenizers ------------------------------------------------------------------------------------------------------

class Tokenizer:
    """Text → symbol ids, one NeMo tokenizer's table and rules. ``tokens[i]`` is symbol ``i``."""

    kind = ""

    def __init__(self, tokens: List[str], *, add_blank_at: Any = None, punct: bool = True,
                 punct_list: Sequence[str] = DEFAULT_PUNCTUATION, pad_with_space: bool = False) -> None:
        self.pad = len(tokens)
        tokens = tokens + [PAD]
        self.blank: Optional[int] = None
        if add_blank_at is not None:
            self.blank = len(tokens)
            tokens.append(BLANK)
        self.oov = len(tokens)
        tokens.append(OOV)
        if add_blank_at == "last":
            tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
            self.oov, self.blank = self.blank, self.oov
        self.tokens = tokens
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.punct, self.punct_list = punct, tuple(punct_list)
        self.pad_with_space = pad_with_space
        self.space = self.ids[" "]

    def symbols(self, text: str) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ids(self, items: Iterable[str], keep: Callable[[str], bool]) -> List[int]:
        out: List[str] = []
        for item in items:  # NeMo's branch order: IPA tables hold the space, so there every space is kept
            if item == " " and out and out[-1] != " ":
                out.append(item)
            elif keep(item):
                out.append(item)
            elif self.punct and item in self.punct_list:
                out.append(item)
        while out and out[-1] == " ":
            out.pop()
        if self.pad_with_space:
            out = [" "] + out + [" "]
        return [self.ids[s] for s in out]

    def encode(self, text: str) -> List[int]:  # pragma: no cover - abstract
        raise NotImplementedError


class CharsTokenizer(Tokenizer):
    kind = CHARS

    def __init__(self, *, punct: bool = True, apostrophe: bool = True, add_blank_at: Any = None,
                 pad_with_space: bool = False, non_default_punct_list: Optional[Sequence[str]] = None) -> None:
        punct_list = tuple(non_default_punct_list) if non_default_punct_list is not None else DEFAULT_PUNCTUATION
        tokens = [" "] + list(string.ascii_lowercase) + (["'"] if apostrophe else []) + (
            list(punct_list) if punct else [])
        super().__init__(tokens, add_blank_at=add_blank_at, punct=punct, punct_list=punct_list,
                         pad_with_space=pad_with_space)

    def encode(self, text: str) -> List[int]:
        table = self.ids
        return self._ids(english_preprocess(text), lambda c: (c.isalnum() or c == "'") and c in table)


class ArpabetTokenizer(Tokenizer):
    kind = ARPABET

    def __init__(self, g2p: ArpabetG2p, *, punct: bool = True, non_default_punct_list: Optional[Sequence[str]] = None,
                 stresses: bool = False, chars: bool = False, apostrophe: bool = True, add_blank_at: Any = None,
                 pad_with_space: bool = False, silence: Optional[str] = None) -> None:
        punct_list = tuple(non_default_punct_list) if non_default_punct_list is not None else DEFAULT_PUNCTUATION
        tokens = [" "] + ([silence] if silence is not None else []) + list(ARPABET_CONSONANTS)
        tokens += [f"{v}{s}" for v in ARPABET_VOWELS for s in (0, 1, 2)] if stresses else list(ARPABET_VOWELS)
        if chars:
            tokens += list(string.ascii_lowercase)
        tokens += (["'"] if apostrophe else []) + (list(punct_list) if punct else [])
        super().__init__(tokens, add_blank_at=add_blank_at, punct=punct, punct_list=punct_list,
                         pad_with_space=pad_with_space)
        self.g2p, self.stresses = g2p, stresses

    def symbols(self, text: str) -> List[str]:
        out = []
        for p in self.g2p(english_preprocess(text, lower=False)):
            if p.isalnum() and len(p) == 3 and not self.stresses:
                p = p[:2]
            out.append(p)
        return out

    def encode(self, text: str) -> List[int]:
        table = self.ids
        return self._ids(self.symbols(text), lambda p: (p.isalnum() or p == "'") and p in table)


class IpaTokenizer(Tokenizer):
    kind = IPA

    def __init__(self, g2p: IpaG2p, *, punct: bool = True, non_default_punct_list: Optional[Sequence[str]] = None,
                 apostrophe: bool = False, add_blank_at: Any = None, pad_with_space: bool = False,
                 silence: Optional[str] = None, fixed_vocab: Optional[Sequence[str]] = None) -> None:
        if fixed_vocab:
            raise TokenizerError("IPATokenizer with fixed_vocab is not supported; export the model without it")
        symbols = set(g2p.symbols)
        if apostrophe:
            symbols.add("'")
        punct_list = tuple(non_default_punct_list) if non_default_punct_list is not None else tuple(
            sorted(DEFAULT_PUNCTUATION))
        if punct:
            symbols.update(punct_list)
        tokens = sorted(symbols)
        if " " not in g2p.symbols:
            tokens.append(" ")
        if silence is not None:
            tokens.append(silence)
        super().__init__(tokens, add_blank_at=add_blank_at, punct=punct, punct_list=punct_list,
                         pad_with_space=pad_with_space)
        self.g2p = g2p

    def symbols(self, text: str) -> List[str]:
        return self.g2p(english_preprocess(text, lower=False))

    def encode(self, text: str) -> List[int]:
        table = self.ids
        return self._ids(self.symbols(text), lambda p: p in table)


def tokenizer_class(config: Dict[str, Any]) -> str:
    """The NeMo class a ``text_tokenizer`` section names (its last dotted part), or TokenizerError."""
    target = str((config or {}).get("_target_") or "")
    name = target.rsplit(".", 1)[-1]
    if name not in (CHARS, ARPABET, IPA) or not (target.startswith((_TOKENIZERS, _OLD_TOKENIZERS)) or "." not in target):
        raise TokenizerError(f"text_tokenizer {target or '(none)'} is not one servicemaker reproduces; supported: "
                             f"NeMo's {CHARS}, {ARPABET} (ARPAbet) and {IPA} (en-US)")
    return name


def from_config(config: Dict[str, Any], phone_dict: Optional[str] = None, heteronyms: Optional[str] = None
                ) -> Tokenizer:
    """The tokenizer a FastPitch ``text_tokenizer`` section describes; ``phone_dict`` and ``heteronyms`` are the
    files its ``g2p`` names (staged), needed by the phoneme tokenizers."""
    kind = tokenizer_class(config)
    punct_list = config.get("non_default_punct_list")
    common: Dict[str, Any] = dict(punct=bool(config.get("punct", True)), add_blank_at=config.get("add_blank_at"),
                                  pad_with_space=bool(config.get("pad_with_space", False)),
                                  non_default_punct_list=list(punct_list) if punct_list is not None else None)
    if kind == CHARS:
        return CharsTokenizer(apostrophe=bool(config.get("apostrophe", True)), **common)
    g2p_cfg = config.get("g2p") or {}
    if not phone_dict:
        raise TokenizerError(f"{kind} needs a phone dictionary: the model config's text_tokenizer.g2p.phoneme_dict "
                             "names none in the export; give --phone_dictionary_file")
    if "locale" in config and config["locale"] not in (None, "en-US"):
        raise TokenizerError(f"{kind} locale {config['locale']!r}: servicemaker reproduces en-US only")
    # at inference NeMo phonemizes every word (phone probability 1.0); a configured probability still adds graphemes
    with_chars = g2p_cfg.get("phoneme_probability") is not None
    ambiguous = bool(g2p_cfg.get("ignore_ambiguous_words", True))
    if kind == ARPABET:
        words = read_cmudict(phone_dict, str(g2p_cfg.get("encoding") or "latin-1"))
        het = read_lines(heteronyms, str(g2p_cfg.get("encoding") or "latin-1")) if heteronyms else ()
        return ArpabetTokenizer(ArpabetG2p(words, het, ambiguous), stresses=bool(config.get("stresses", False)),
                                chars=bool(config.get("chars", False)) or with_chars,
                                apostrophe=bool(config.get("apostrophe", True)), silence=config.get("silence"),
                                **common)
    het = read_lines(heteronyms, "utf-8") if heteronyms else ()
    g2p = IpaG2p(read_ipa_dict(phone_dict), het, ambiguous, use_chars=bool(g2p_cfg.get("use_chars", False)) or with_chars,
                 use_stresses=bool(g2p_cfg.get("use_stresses", True)),
                 grapheme_case=str(g2p_cfg.get("grapheme_case") or "upper"),
                 grapheme_prefix=str(g2p_cfg.get("grapheme_prefix") or ""))
    return IpaTokenizer(g2p, apostrophe=bool(config.get("apostrophe", False)), silence=config.get("silence"),
                        fixed_vocab=config.get("fixed_vocab"), **common)


# --- nemo2riva's mapping.txt --------------------------------------------------------------------------------------------

def mapping_lines(tokenizer: Tokenizer) -> List[str]:
    """The ``mapping.txt`` nemo2riva writes for this tokenizer's table: ``"<id> <token>"`` per symbol; ARPAbet
    phones (upper-case alphanumerics) and IPA phones prefixed with ``@``; an upper-case line for every lower-case
    alphanumeric token of a non-IPA table."""
    out = []
    for i, token in enumerate(tokenizer.tokens):
        if tokenizer.kind == IPA:
            phone = token in ("ˈ", "ˌ", "ː") or (token.isalnum() and token.islower())
            out.append(f"{i} {'@' + token if phone else token}")
            continue
        shown = "@" + token if not token.islower() and token.isalnum() else token
        out.append(f"{i} {shown}")
        if shown.islower() and shown.isalnum():
            out.append(f"{i} {shown.upper()}")
    return out


def check_mapping(tokenizer: Tokenizer, text: str) -> Optional[str]:
    """None when nemo2riva's ``mapping.txt`` (its text) describes ``tokenizer``'s table, else the first
    difference, for the message."""
    want = mapping_lines(tokenizer)
    got = text.split("\n")
    while got and got[-1] == "":
        got.pop()
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            return f"line {i + 1} is {g!r}; the model config's tokenizer gives {w!r}"
    if len(want) != len(got):
        return f"it has {len(got)} lines; the model config's tokenizer gives {len(want)}"
    return None


# --- sentences -----------------------------------------------------------------------------------------------------------

_ABBREVIATION_END = re.compile(r"(?:\b(?:[A-Za-z]\.){2,}|\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|vs|etc|e\.g|i\.e|No|"
                               r"Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Inc|Ltd|Co|Corp|approx|dept)\.)$",
                               re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s+|$)")


def split_sentences(text: str, max_chars: int) -> List[str]:
    """Sentences of ``text``: split after ``.``, ``!``, ``?`` or ``…`` (and closing quotes or brackets) followed by
    whitespace, except after a common abbreviation or initials; a sentence longer than ``max_chars`` is split again
    after its last ``,`` ``;`` ``:`` or space that keeps the part within ``max_chars`` (a word longer than that is
    cut). Each part is stripped (its inside is left as written: the tokenizer reads it as NeMo does); empty parts
    are dropped."""
    sentences: List[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        head = text[start:end]
        if match.group(0).startswith(".") and _ABBREVIATION_END.search(head.rstrip("\"')]")):
            continue
        sentences.append(head)
        start = end
    sentences.append(text[start:])
    out: List[str] = []
    for sentence in sentences:
        out.extend(_split_long(sentence.strip(), max_chars))
    return [s for s in out if s]


def _split_long(sentence: str, max_chars: int) -> List[str]:
    parts = []
    while len(sentence) > max_chars:
        window = sentence[:max_chars + 1]
        cut = max(window.rfind(", "), window.rfind("; "), window.rfind(": "))
        cut = cut + 1 if cut > 0 else max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        if cut <= 0:
            cut = max_chars
        parts.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    parts.append(sentence)
    return parts
