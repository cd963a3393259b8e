"""A bounded, reproducible fuzz run over the archive reader, the manifest/YAML layer and the codecs.

Damaged archives made from small valid seeds (tests/fuzz_seeds.py, tests/fuzz_strategies.py; the oracle in tests/fuzzing.py) go through
``svc-inspect --json --verify``, ``svc-inspect --verify`` and svc-build. The run is derandomized (the same
archives on every machine) and prints its figures; it fails if any crash, hang or accepted corruption is found.
The long run is ``benchmarks/fuzz_archives.py``.
"""

from __future__ import annotations

import time
from datetime import timedelta

from hypothesis import HealthCheck, Phase, given, settings

from fuzz_strategies import cases
from fuzz_seeds import make_seeds
from fuzzing import Runner, Tally

EXAMPLES = 1000
#: stop generating once this much time is spent, so the whole test stays under a minute on a slow 2-core box
BUDGET_SECONDS = 45.0


def test_fuzz_archives(tmp_path, capsys):
    started = time.perf_counter()
    tally = Tally()
    runner = Runner(tmp_path / "run", tally)
    seeds = make_seeds(tmp_path / "seeds", runner.check_seed)
    seed_files = sorted(p.name for p in (tmp_path / "seeds").iterdir())
    skipped = 0

    @settings(max_examples=EXAMPLES, deadline=timedelta(seconds=60), derandomize=True, database=None,
              phases=(Phase.explicit, Phase.generate), print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=cases(seeds))
    def fuzz(case):
        nonlocal skipped
        if time.perf_counter() - started > BUDGET_SECONDS:
            skipped += 1
            return
        runner.run(case)

    fuzz()
    assert sorted(p.name for p in (tmp_path / "seeds").iterdir()) == seed_files, "the seed folder was written to"
    with capsys.disabled():
        print(f"\nfuzz (bounded, derandomized, {time.perf_counter() - started:.0f} s"
              f"{f', {skipped} examples skipped at the time budget' if skipped else ''}):")
        print(tally.report())
    assert tally.tried >= 50, f"only {tally.tried} archives tried: the run is too slow to mean anything"
    assert tally.failures == 0, tally.report()
