"""Run every atheris harness in ``fuzz/`` in its own subprocess and report inputs/s and failures.

    python fuzz/run_all.py --runs 2000              # smoke (what tests/hardening/test_fuzz_smoke.py does)
    python fuzz/run_all.py --runs 1000000 -j 2      # the long run documented in docs/hardening.md
    python fuzz/run_all.py --runs 100000 --only sip,sdp --json out.json

Each harness keeps its corpus in ``fuzz/.corpus/<name>`` (seeded from the fixtures on first use) unless
``--fresh`` gives it an empty temporary one; crash inputs go to ``fuzz/crashes/``, each harness's
libFuzzer output to ``fuzz/.logs/<name>.log``. Exit status 1 if any
harness failed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ_DIR.glob("fuzz_*.py"))

_DONE = re.compile(r"^Done (\d+) (?:runs )?in (\d+) second", re.MULTILINE)
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.MULTILINE)
_COV = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")


@dataclass
class Result:
    name: str
    runs: int
    seconds: float
    inputs_per_s: float
    coverage: int
    corpus: int
    ok: bool
    failure: str


def run_one(name: str, runs: int, corpus: Path | None, timeout: float | None, extra: list[str],
            logs: Path = FUZZ_DIR / ".logs") -> Result:
    cmd = [sys.executable, str(FUZZ_DIR / f"fuzz_{name}.py"), f"-atheris_runs={runs}", "-print_final_stats=1",
           *extra]
    if corpus is not None:
        cmd.append(str(corpus))
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
    out = log_path.read_text(errors="replace")
    elapsed = time.monotonic() - start
    stats = dict(_STAT.findall(out))
    executed = int(stats.get("number_of_executed_units", 0))
    done = _DONE.search(out)
    if done:
        executed = max(executed, int(done.group(1)))
    cov = _COV.findall(out)
    failure = ""
    if code != 0:
        m = re.search(r"=== Uncaught Python exception: ===\n(.*?)\n", out)
        failure = m.group(1) if m else (f"timeout after {timeout} s" if code == -1 else f"exit {code}")
        crash = re.search(r"Test unit written to (\S+)", out)
        if crash:
            failure += f" [{crash.group(1)}]"
    fuzz_seconds = max(elapsed, 1e-3)
    return Result(name, executed, round(elapsed, 1), round(executed / fuzz_seconds, 1),
                  int(cov[-1][0]) if cov else 0, int(cov[-1][2]) if cov else 0, code == 0, failure)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000, help="inputs per harness (default 2000)")
    ap.add_argument("--only", default="", help="comma-separated harness names (default: all)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="harnesses run at once")
    ap.add_argument("--fresh", action="store_true", help="start each harness from its seeds in a temp dir")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per harness (default: none)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("extra", nargs="*", help="libFuzzer flags passed through (after --)")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or HARNESSES
    unknown = set(names) - set(HARNESSES)
    if unknown:
        ap.error(f"unknown harness(es): {', '.join(sorted(unknown))}; have {', '.join(HARNESSES)}")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        def job(name: str) -> Result:
            corpus = Path(tmp) / name if args.fresh else None
            return run_one(name, args.runs, corpus, args.timeout, args.extra)

        print(f"{'harness':<10} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'cov':>6} {'corpus':>6}  result",
              flush=True)
        results: list[Result] = []
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            for r in pool.map(job, names):
                results.append(r)
                print(f"{r.name:<10} {r.runs:>10} {r.seconds:>8} {r.inputs_per_s:>9} {r.coverage:>6} "
                      f"{r.corpus:>6}  {'ok' if r.ok else 'FAIL ' + r.failure}", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    failed = [r.name for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} harnesses ok" + (f"; failed: {', '.join(failed)}"
                                                                          if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
