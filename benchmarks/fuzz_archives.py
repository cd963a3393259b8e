"""The long fuzz run over the archive reader, the manifest/YAML layer and the codecs (svc-inspect, svc-build).

Damaged archives made from small valid seeds (``tests/fuzz_seeds.py``, ``tests/fuzz_strategies.py``; the oracle is ``tests/fuzzing.py``) go through
``svc-inspect --json --verify``, ``svc-inspect --verify`` and svc-build's ``build``, in batches of hypothesis
examples seeded from ``--seed`` (batch ``i`` uses seed ``1000 * SEED + i``), until ``--minutes`` have passed:

    python benchmarks/fuzz_archives.py --minutes 30 --seed 1 --out build/fuzz-findings

It prints the figures (archives tried, crashes, hangs over 2 s, accepted corruptions, and two informational
counts) every minute and at the end, with every distinct finding. Each failing input is saved into ``--out``
(at most ``--keep`` per distinct finding) as ``<category>-NNNN.riva|.rmir`` with a ``.json`` note: the seed, the
key, the mutations, the message and a command that reproduces it (``salts.yaml`` beside them holds the legacy salt
of the seeds). A seed the current code cannot write or refuses is left out with a note. Exit status 1 if a crash,
hang or accepted corruption was found, or a seed was left out. ``--light`` leaves out the costliest
inputs (1.5M-node and 8 MiB YAML). The bounded run for CI is ``tests/test_fuzz.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from fuzz_strategies import cases  # noqa: E402
from fuzz_seeds import CIPHER_ID, SALT, make_seeds  # noqa: E402
from fuzzing import Finding, Runner, Tally  # noqa: E402


def save_case(folder: Path, finding: Finding, number: int) -> Path:
    """Write a failing input and a JSON note (seed, key, mutations, message, a command to reproduce it)."""
    folder.mkdir(parents=True, exist_ok=True)
    salts = folder / "salts.yaml"
    if not salts.exists():
        salts.write_text(f"{CIPHER_ID}: {SALT.hex()}\n")
    stem = f"{finding.category}-{number:04d}"
    path = folder / f"{stem}{finding.case.seed.suffix}"
    path.write_bytes(finding.case.data)
    key = finding.case.key
    note = {"category": finding.category, "entry": finding.entry, "message": finding.message,
            "signature": finding.signature, "seed": finding.case.seed.name, "key_mode": finding.case.key_mode,
            "ops": finding.case.ops,
            "reproduce": f"svc-inspect {path.name}{':' + key if key else ''} --json --verify --eff-salts salts.yaml"
                         f"; svc-build {finding.case.seed.pipeline} out.rmir {path.name}{':' + key if key else ''}"
                         f" --eff-salts salts.yaml"}
    (folder / f"{stem}.json").write_text(json.dumps(note, indent=2, default=str) + "\n")
    return path


#: the costliest inputs (a 1.5M-node manifest takes seconds to refuse) run at most once per this many cases
HEAVY_EVERY = 40


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to fuzz (default 30)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    ap.add_argument("--out", type=Path, default=Path("build/fuzz-findings"), help="folder for failing inputs")
    ap.add_argument("--keep", type=int, default=5, help="inputs saved per distinct finding (default 5)")
    ap.add_argument("--batch", type=int, default=200, help="hypothesis examples per batch (default 200)")
    ap.add_argument("--light", action="store_true", help="leave out the costliest YAML inputs")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    deadline = started + args.minutes * 60
    tally = Tally()
    saved: dict[str, int] = {}
    numbers = iter(range(1, 10**9))

    def keep(finding: Finding, _count: int) -> None:
        if finding.category == "stream" or saved.get(finding.signature, 0) >= args.keep:
            return
        saved[finding.signature] = saved.get(finding.signature, 0) + 1
        save_case(args.out, finding, next(numbers))

    work = Path(tempfile.mkdtemp(prefix="svc-fuzz-"))
    try:
        runner = Runner(work / "run", tally)
        missing: list[str] = []
        seeds = make_seeds(work / "seeds", runner.check_seed, missing)
        for note in missing:
            print(f"left out: {note}", flush=True)
        tally.on_finding = keep
        print(f"seeds: {', '.join(s.name for s in seeds)}; fuzzing for {args.minutes:g} min, seed {args.seed}",
              flush=True)
        last_print = time.perf_counter()
        batch = heavy_runs = 0
        while time.perf_counter() < deadline:

            @seed(1000 * args.seed + batch)
            @settings(max_examples=args.batch, deadline=None, database=None, derandomize=False,
                      phases=(Phase.generate,), suppress_health_check=list(HealthCheck), print_blob=False)
            @given(case=cases(seeds, heavy=not args.light))
            def fuzz(case):
                nonlocal last_print, heavy_runs
                if time.perf_counter() >= deadline:
                    return
                if case.heavy:  # multi-second inputs: at most one per HEAVY_EVERY cases
                    if heavy_runs * HEAVY_EVERY > tally.tried:
                        return
                    heavy_runs += 1
                runner.run(case)
                if time.perf_counter() - last_print >= 60:
                    last_print = time.perf_counter()
                    minutes = (last_print - started) / 60
                    print(f"[{minutes:.1f} min] " + tally.figures().replace("\n", "; "), flush=True)

            fuzz()
            batch += 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfuzz (long run, seed {args.seed}, {(time.perf_counter() - started) / 60:.1f} min, {batch} batches):")
    print(tally.report(limit=200))
    if saved:
        print(f"failing inputs saved in {args.out}")
    return 1 if tally.failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
