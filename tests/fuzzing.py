"""Fuzzing the archive reader, the manifest/YAML layer and the codecs: the oracle and the figures.

Shared by ``tests/test_fuzz.py`` (a bounded, derandomized run) and ``benchmarks/fuzz_archives.py`` (the long run).
The seeds (small valid exports and RMIRs, plain and encrypted) are in ``tests/fuzz_seeds.py``, the mutations in
``tests/fuzz_strategies.py``.

Each case runs three entry points on the mutated archive: ``svc-inspect FILE[:KEY] --json --verify`` and
``svc-inspect FILE[:KEY] --verify`` through the CLI, and svc-build's :func:`servicemaker.build.build`. The oracle:

* **crash**: an exit code other than 0 or 2-9, an exception that is not a ``ServiceMakerError`` subclass, a
  traceback or "internal error" in the output, an error message over one line (bullet lines of a validation
  error aside) or over 1000 characters, a key echoed in the output, ``--json`` output that is not strict JSON
  (NaN/Infinity refused), or a file left in the case folder or the working folder that should not be there;
* **hang**: one entry point over :data:`HANG_SECONDS`;
* **accepted corruption**: a run succeeded but an artifact read back (the ``--verify`` digests, or the plaintext
  svc-build wrote into the RMIR) differs from the seed's, although the archive as read claims integrity for that
  artifact (a ``sha256`` prop or encryption), or the damage was in the gzip stream, whose CRC-32 covers every
  byte (then any change of the inspect document counts as well);
* **downgrade** (reported, not failed): a manifest edit stripped an artifact's encryption/``sha256`` props, the
  run succeeded, and the artifact read back differs from the seed's.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import tarfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from typer.testing import CliRunner

from servicemaker import yamlio
from servicemaker.build import BuildOptions, build
from servicemaker.cli.inspect import app as inspect_app
from servicemaker.eff.reader import EffReader
from servicemaker.errors import ServiceMakerError
from servicemaker.keys import ArchiveArg, Secret

from fuzz_seeds import CIPHER_ID, KEY, SALT, Seed, SeedRefused, claims_integrity, salt_table, where

WRONG_KEY = "fuzz-wrong-key"
HANG_SECONDS = 2.0
#: a run this long is stopped (and counted as a hang) so one case cannot stall the whole run
WATCHDOG_SECONDS = 30.0
MAX_MESSAGE_CHARS = 1000
ENV_VARS = ("SERVICEMAKER_KEY", "SERVICEMAKER_EFF_SALTS", "SERVICEMAKER_DEBUG")


# --- cases and figures ---------------------------------------------------------------------------------------------

@dataclass
class Case:
    seed: Seed
    data: bytes
    key_mode: str  # right | wrong | none
    ops: list[str]
    gzip_level: bool

    @property
    def key(self) -> str | None:
        if self.seed.key is None:
            return None
        return {"right": KEY, "wrong": WRONG_KEY, "none": None}[self.key_mode]

    def __repr__(self) -> str:
        return f"Case({self.describe()[:300]!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def heavy(self) -> bool:
        return any(op.endswith("(heavy)") for op in self.ops)

    def describe(self) -> str:
        return f"seed {self.seed.name}, key {self.key_mode}, ops: " + "; ".join(self.ops)


@dataclass
class Finding:
    category: str
    entry: str
    signature: str
    message: str
    case: Case
    count: int = 1


FAILING = ("crash", "hang", "corruption")
LABELS = {"crash": "crashes", "hang": f"hangs over {HANG_SECONDS:.0f} s", "corruption": "accepted corruptions",
          "downgrade": "accepted downgrades (informational)",
          "stream": "gzip damage accepted, content intact (informational)"}


@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    counts: Counter = field(default_factory=Counter)
    findings: dict[str, Finding] = field(default_factory=dict)
    on_finding: Callable[[Finding, int], None] | None = None

    def add(self, category: str, entry: str, message: str, case: Case) -> None:
        self.counts[category] += 1
        sig = f"{category} | {entry} | {_normalize(message)}"
        if sig in self.findings:
            self.findings[sig].count += 1
        else:
            self.findings[sig] = Finding(category, entry, sig, message, case)
        if self.on_finding is not None:
            self.on_finding(self.findings[sig], self.counts[category])

    @property
    def failures(self) -> int:
        return sum(self.counts[c] for c in FAILING)

    def figures(self) -> str:
        lines = [f"archives tried: {self.tried} (svc-inspect accepted {self.accepted})"]
        lines += [f"{LABELS[c]}: {self.counts[c]}" for c in ("crash", "hang", "corruption", "downgrade", "stream")]
        return "\n".join(lines)

    def report(self, limit: int = 40) -> str:
        out = [self.figures()]
        shown = [f for f in self.findings.values() if f.category != "stream"]
        if shown:
            out.append(f"distinct findings: {len(shown)}")
        for f in sorted(shown, key=lambda f: (f.category, -f.count))[:limit]:
            out.append(f"- [{f.category} x{f.count}] {f.entry}: {f.message[:300]}\n    {f.case.describe()[:400]}")
        return "\n".join(out)


def _normalize(message: str) -> str:
    text = message.splitlines()[0] if message else ""
    text = re.sub(r"/\S*/(in\.\w+)", r"\1", text)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b[0-9a-f]{16,}\b", "<hex>", text)
    text = re.sub(r"\d+", "N", text)
    return text[:160]


# --- the oracle ----------------------------------------------------------------------------------------------------

class Hang(BaseException):
    """Raised by the watchdog (a BaseException, so the code under test's ``except Exception`` lets it through)."""


def _on_alarm(signum, frame):
    raise Hang()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, bool]:
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)
    started = time.perf_counter()
    try:
        return fn(), time.perf_counter() - started, False
    except Hang:
        return None, time.perf_counter() - started, True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _line_problem(line: str) -> str | None:
    if len(line) > MAX_MESSAGE_CHARS:
        return f"an error line of {len(line)} characters: {line[:120]}…"
    return None


def _message_problem(stderr: str) -> str | None:
    """What is wrong with the CLI's error output: 'error: <one line>', then 'hint: ...' or '  - ...' lines."""
    lines = stderr.rstrip("\n").splitlines()
    if not lines or not lines[0].startswith("error: ") or len(lines[0]) <= len("error: "):
        return "error output does not start with an 'error: <message>' line: " + " / ".join(lines[:2])[:200]
    for line in lines[1:]:
        if not line.startswith(("hint: ", "  - ")):
            return f"the error message spans several lines ({len(lines)}): {' / '.join(lines[:3])[:300]}"
    return next(filter(None, map(_line_problem, lines)), None)


def _error_problem(err: ServiceMakerError) -> str | None:
    """What is wrong with a library error: a multi-line or empty message (validation bullets aside)."""
    head = err.message
    bullets = list(getattr(err, "violations", []) or [])
    if bullets:
        head = head.split("\n", 1)[0]
    parts = [head, *bullets, *([err.hint] if err.hint else [])]
    if not head.strip():
        return f"{type(err).__name__} with an empty message"
    for part in parts:
        if "\n" in str(part):
            return f"{type(err).__name__}: a message over several lines: {str(part)[:200]!r}"
    return next(filter(None, map(_line_problem, map(str, parts))), None)


def lenient_manifest_artifacts(data: bytes) -> dict[str, Any] | None:
    """The artifacts of a (mutated) archive's manifest as a tolerant reader sees them, or None."""
    try:
        raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 64 << 20)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            for info in tf:
                if info.isfile() and info.name.lstrip("./") == "manifest.yaml":
                    doc = yamlio.load(tf.extractfile(info).read())
                    arts = doc.get("artifacts") if isinstance(doc, dict) else None
                    return arts if isinstance(arts, dict) else None
    except Exception:  # noqa: BLE001 - unreadable leniently: the caller falls back to the seed's claims
        return None
    return None


class Runner:
    """Runs cases in ``root`` (a private scratch folder) and records findings in ``tally``."""

    def __init__(self, root: Path, tally: Tally) -> None:
        self.root = root
        self.tally = tally
        self.cli = CliRunner()
        self.case_dir = root / "case"
        self.cwd = root / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.salts_file = root / "salts.yaml"
        self.salts_file.write_text(f"{CIPHER_ID}: {SALT.hex()}\n")
        for var in ENV_VARS:
            os.environ.pop(var, None)

    # -- entry points -------------------------------------------------------------------------------------------
    def _inspect(self, case: Case, path: Path, as_json: bool) -> tuple[str, Any]:
        """('ok', doc|None) or ('refused', None) or ('crash'|'hang', message)."""
        key = case.key
        args = [f"{path}:{key}" if key else str(path), "--verify", "--eff-salts", str(self.salts_file)]
        if as_json:
            args.append("--json")
        result, secs, hung = _timed(lambda: self.cli.invoke(inspect_app, args))
        entry = "svc-inspect --json --verify" if as_json else "svc-inspect --verify"
        if hung or secs > HANG_SECONDS:
            self.tally.add("hang", entry, f"took {secs:.1f} s", case)
            if hung:
                return "hang", None
        code, out, err = result.exit_code, result.stdout, result.stderr
        problem = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problem = f"uncaught {type(result.exception).__name__}: {result.exception}{where(result.exception)}"
        elif code == 1 or "internal error" in result.output:
            problem = f"exit {code}: " + " / ".join(result.output.strip().splitlines()[:2])
        elif code not in (0, *range(2, 10)):
            problem = f"exit code {code}"
        elif "Traceback" in result.output:
            problem = "traceback in the output"
        elif KEY in result.output or WRONG_KEY in result.output:
            problem = "the key appears in the output"
        elif code != 0:
            problem = _message_problem(err)
        if problem is not None:
            self.tally.add("crash", entry, problem, case)
            return "crash", None
        if code != 0:
            return "refused", None
        if not as_json:
            return "ok", None
        try:
            doc = _strict_json(out)
        except ValueError as exc:
            self.tally.add("crash", entry, f"output is not strict JSON: {exc}", case)
            return "crash", None
        return "ok", doc

    def _build(self, case: Case, path: Path, out: Path) -> str:
        key = case.key
        opts = BuildOptions(pipeline=case.seed.pipeline, output=ArchiveArg(out, None),
                            inputs=[ArchiveArg(path, Secret(key) if key else None)], salts=salt_table())
        entry = "svc-build"
        try:
            _, secs, hung = _timed(lambda: build(opts))
        except ServiceMakerError as err:
            bad = None
            if not 2 <= err.exit_code <= 9:
                bad = f"{type(err).__name__} with exit code {err.exit_code}: {err}"
            else:
                bad = _error_problem(err)
            if bad:
                self.tally.add("crash", entry, bad, case)
                return "crash"
            return "refused"
        except Exception as err:  # noqa: BLE001 - what the oracle is looking for
            first = (str(err).splitlines() or [""])[0][:200]
            self.tally.add("crash", entry, f"uncaught {type(err).__name__}: {first}{where(err)}", case)
            return "crash"
        if hung or secs > HANG_SECONDS:
            self.tally.add("hang", entry, f"took {secs:.1f} s", case)
            if hung:
                return "hang"
        return "ok"

    # -- one case -----------------------------------------------------------------------------------------------
    def run(self, case: Case) -> None:
        self.tally.tried += 1
        shutil.rmtree(self.case_dir, ignore_errors=True)
        self.case_dir.mkdir()
        path = self.case_dir / f"in{case.seed.suffix}"
        path.write_bytes(case.data)
        out = self.case_dir / "out.rmir"
        before = os.getcwd()
        os.chdir(self.cwd)
        try:
            status, doc = self._inspect(case, path, as_json=True)
            self._inspect(case, path, as_json=False)
            built = self._build(case, path, out)
        finally:
            os.chdir(before)
        if status == "ok":
            self.tally.accepted += 1
        cache: list[set[str]] = []

        def protected_now() -> set[str]:  # parsed only when needed: a hostile manifest can be slow to parse
            if not cache:
                cache.append(self._protected_now(case))
            return cache[0]

        if status == "ok" and doc is not None:
            self._compare_doc(case, doc, protected_now)
        if built == "ok":
            self._compare_rmir(case, out, protected_now)
        expected = {path.name} | ({out.name} if built == "ok" else set())
        left = sorted(p.name for p in self.case_dir.iterdir())
        stray = sorted(set(left) - expected) + sorted(p.name for p in self.cwd.iterdir())
        if stray:
            self.tally.add("crash", "files", f"left behind: {', '.join(stray[:3])}", case)
            for p in self.cwd.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _protected_now(self, case: Case) -> set[str]:
        arts = lenient_manifest_artifacts(case.data)
        if arts is None:
            return set(case.seed.protected)
        return {str(n) for n, p in arts.items() if claims_integrity(p)}

    def _judge(self, case: Case, entry: str, name: str, differs: bool, protected_now: Callable[[], set[str]]) -> None:
        if not differs:
            return
        if case.gzip_level or name in protected_now():
            self.tally.add("corruption", entry, f"artifact '{name}' read back differs from the seed", case)
        elif name in case.seed.protected:
            self.tally.add("downgrade", entry, f"artifact '{name}' read back differs (integrity props removed)",
                           case)

    def _compare_doc(self, case: Case, doc: Any, protected_now: Callable[[], set[str]]) -> None:
        entry = "svc-inspect --json --verify"
        want = {a["name"]: (a.get("sha256"), a.get("size")) for a in case.seed.doc["artifacts"]}
        try:
            got = {a["name"]: (a.get("sha256"), a.get("size")) for a in doc["artifacts"]}
        except (KeyError, TypeError):
            self.tally.add("crash", entry, "the JSON document has no artifacts list", case)
            return
        for name, digest in got.items():
            if name in want:
                self._judge(case, entry, name, digest != want[name], protected_now)
        if case.gzip_level:
            strip = ("file", "file_size", "file_sha256")
            same = {k: v for k, v in doc.items() if k not in strip} == \
                   {k: v for k, v in case.seed.doc.items() if k not in strip}
            if not same:
                self.tally.add("corruption", entry, "damaged gzip stream accepted with a different document", case)
            else:
                self.tally.add("stream", entry, "damaged gzip stream accepted", case)

    def _compare_rmir(self, case: Case, out: Path, protected_now: Callable[[], set[str]]) -> None:
        try:
            with EffReader(out) as reader:
                for name, props in reader.artifacts.items():
                    source = props.get("source")
                    if source in case.seed.plaintexts:
                        data = reader.read_bytes(name, max_bytes=1 << 30)
                        self._judge(case, "svc-build", source, data != case.seed.plaintexts[source], protected_now)
        except ServiceMakerError as err:
            self.tally.add("crash", "svc-build", f"the RMIR written cannot be read back: {err}", case)

    def check_seed(self, seed: Seed) -> None:
        """Run an unmutated seed; it must be accepted by every entry point that can take it (an RMIR is no
        svc-build input). Findings while checking go to a scratch tally, not to the run's."""
        case = Case(seed, seed.archive, "right", ["(seed)"], gzip_level=False)
        real, self.tally = self.tally, Tally()
        try:
            status, doc = self._inspect(case, self._place(seed), as_json=True)
            if status != "ok" or doc is None:
                raise SeedRefused(f"seed {seed.name} refused by svc-inspect ({self.tally.report()})")
            seed.doc = doc
            out = self.case_dir / "out.rmir"
            out.unlink(missing_ok=True)
            if seed.suffix == ".riva" and self._build(case, self._place(seed), out) != "ok":
                raise SeedRefused(f"seed {seed.name} refused by svc-build ({self.tally.report()})")
            if self.tally.counts:
                raise SeedRefused(f"seed {seed.name} produced findings unmutated: {self.tally.report()}")
        finally:
            self.tally = real
            shutil.rmtree(self.case_dir, ignore_errors=True)

    def _place(self, seed: Seed) -> Path:
        self.case_dir.mkdir(exist_ok=True)
        path = self.case_dir / f"in{seed.suffix}"
        path.write_bytes(seed.archive)
        return path
