"""Plant known bugs one at a time and check that the test suite catches each of them.

Every mutant is a ``(file, exact old text, new text, related tests)`` edit. For each one the
script copies the working tree into a temporary folder (the copy, never this checkout, is
edited), replaces the old text (which must occur exactly once: a mutant that no longer
applies is an error, not a pass), and runs ``python -m pytest -q -x <related tests>``
there with ``PYTHONPATH`` set to the copy. It checks first that ``import eenet_cli`` in that
environment loads the copy's mutated module (an editable install of this checkout must not
shadow it). A mutant is *killed* when pytest reports a failing test, *survived* when the
related tests pass.

Before the mutants, the related tests run once on the unmutated copy; they must pass, or
a "kill" would mean nothing.

Usage (from the repository root, inside the project's virtualenv)::

    python scripts/mutants.py                # every mutant; a table on stdout
    python scripts/mutants.py --list         # the mutants and their tests
    python scripts/mutants.py -k lookahead   # only mutants whose name contains the text
    python scripts/mutants.py --keep         # keep the temporary copy (its path is printed)

Exit status: 0 when every mutant is killed, 1 when any survives, 2 when a mutant does not
apply, the unmutated tests fail, or the copy's package is not the one imported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # exact text, found exactly once
    new: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions
    why: str = ""


MUTANTS: list[Mutant] = [
    Mutant(
        "search-refits-quota",
        "eenet_cli/core/eenet.py",
        "    thr = rules[chosen](ranking, costs, budget, correct)\n",
        '    thr = rules["quota"](ranking, costs, budget, correct)\n',
        ("tests/test_eenet_train.py", "-k", "search"),
        "eenet-search refits Algorithm 1's quotas whatever rule cross-validation chose",
    ),
    Mutant(
        "budget-range-drops-last",
        "eenet_cli/artifacts/costs.py",
        "        count = int((stop - start) // step) + 1",
        "        count = int(math.floor((float(stop) - float(start)) / float(step))) + 1",
        ("tests/test_budgets.py",),
        "float counting of start:stop:step: 0.1:0.3:0.1 gives two budgets",
    ),
    Mutant(
        "lookahead-one-step-ahead",
        "eenet_cli/core/lookahead.py",
        "        go = (p[:, k, k + 1 :] - lam * costs[k + 1 :]).max(axis=1)\n",
        "        go = p[:, k, k + 1] - lam * costs[k + 1]\n",
        ("tests/test_lookahead.py",),
        "the rule compares with the next exit only, not the best later exit",
    ),
    Mutant(
        "lookahead-no-cost-term",
        "eenet_cli/core/lookahead.py",
        "        stay = p[:, k, k] - lam * costs[k]\n"
        "        go = (p[:, k, k + 1 :] - lam * costs[k + 1 :]).max(axis=1)\n",
        "        stay = p[:, k, k]\n"
        "        go = p[:, k, k + 1 :].max(axis=1)\n",
        ("tests/test_lookahead.py",),
        "the rule drops the price of cost: -gain is a plain accuracy difference",
    ),
    Mutant(
        "lookahead-stay-unpriced",
        "eenet_cli/core/lookahead.py",
        "        stay = p[:, k, k] - lam * costs[k]\n",
        "        stay = p[:, k, k]\n",
        ("tests/test_lookahead.py",),
        "the cost term is dropped on one side only: stopping at exit k looks free",
    ),
    Mutant(
        "lookahead-drops-class-slope",
        "eenet_cli/core/lookahead.py",
        "    return (x @ w + float(params[\"bias\"])) + (cb[cls] + cs[cls] * m)\n",
        "    return (x @ w + float(params[\"bias\"])) + cb[cls]\n",
        ("tests/test_lookahead.py",),
        "the scorer ignores class_slope, which the JSON format documents",
    ),
    Mutant(
        "baseline-largest-shift",
        "eenet_cli/core/thresholds.py",
        "        if within_budget(cand.avg_cost, budget):\n"
        "            hi = mid\n"
        "            cand.info = {\"shift_to_first_exit\": mid}\n"
        "            best = cand\n"
        "        else:\n"
        "            lo = mid\n",
        "        if within_budget(cand.avg_cost, budget):\n"
        "            lo = mid\n"
        "            cand.info = {\"shift_to_first_exit\": mid}\n"
        "            best = cand\n"
        "        else:\n"
        "            hi = mid\n",
        ("tests/test_baselines.py",),
        "fit_distribution keeps the largest admissible shift to exit 1, not the smallest",
    ),
    Mutant(
        "budget-tolerance-loosened",
        "eenet_cli/core/thresholds.py",
        "    return cost <= budget * (1 + BUDGET_RTOL)\n",
        "    return cost <= budget * (1 + 1e-3)\n",
        ("tests/test_baselines.py",),
        "within_budget forgives 0.1% overspending; tests that used it as their own yardstick could not tell",
    ),
]


# --------------------------------------------------------------------------- mechanics


IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache",
                                ".ruff_cache", "*.egg-info", "build", "dist", ".hypothesis")


class Failure(Exception):
    """Something other than a surviving mutant went wrong (exit status 2)."""


def copy_tree(dest: Path) -> Path:
    repo = dest / "repo"
    shutil.copytree(ROOT, repo, ignore=IGNORE, symlinks=True)
    return repo


def env_for(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)  # the copy first, and nothing else of ours
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale bytecode between mutants
    env.pop("EENET_DEBUG", None)
    return env


def module_of(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


def check_imported_from_copy(repo: Path, mutant: Mutant | None) -> None:
    """``import`` the (mutated) module as the tests will, and check it is the copy's file
    and, for a mutant, that it holds the new text."""
    mod = module_of(mutant.file) if mutant else "eenet_cli"
    code = (
        "import importlib, sys\n"
        f"m = importlib.import_module({mod!r})\n"
        "print(m.__file__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise Failure(f"cannot import {mod} from the copy:\n{r.stderr}")
    got = Path(r.stdout.strip().splitlines()[-1]).resolve()
    want = (repo / (mutant.file if mutant else "eenet_cli/__init__.py")).resolve()
    if got != want:
        raise Failure(f"{mod} was imported from {got}, not from the copy ({want}): is PYTHONPATH overridden?")
    if mutant and mutant.new not in got.read_text(encoding="utf-8"):
        raise Failure(f"{mutant.name}: the imported {got} does not hold the mutation")


def run_pytest(repo: Path, tests: tuple[str, ...]) -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout + r.stderr, time.perf_counter() - start


def first_failure(output: str) -> str:
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return m.group(1) if m else "?"


def apply(repo: Path, mutant: Mutant, original: str) -> None:
    n = original.count(mutant.old)
    if n != 1:
        where = "not found" if n == 0 else f"found {n} times"
        raise Failure(f"mutant {mutant.name}: its old text is {where} in {mutant.file}; update the mutant "
                      f"to the current code:\n---\n{mutant.old}---")
    (repo / mutant.file).write_text(original.replace(mutant.old, mutant.new), encoding="utf-8")


def table(rows: list[dict]) -> str:
    lines = ["| # | mutant | file | related tests | result | first failing test | seconds |",
             "| ---: | --- | --- | --- | --- | --- | ---: |"]
    for i, r in enumerate(rows, 1):
        m: Mutant = r["mutant"]
        lines.append(f"| {i} | {m.name} | {m.file} | `{' '.join(m.tests)}` | {r['result']} | "
                     f"{r['killer'] if r['result'] == 'killed' else '-'} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", dest="only", help="only mutants whose name contains this text")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of the related tests on the unmutated copy")
    args = ap.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or args.only in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.file} -- {' '.join(m.tests)}\n    {m.why}")
        return 0
    if not mutants:
        print("no mutant matches", file=sys.stderr)
        return 2

    # every mutant must apply to this checkout before anything runs
    for m in mutants:
        text = (ROOT / m.file).read_text(encoding="utf-8")
        if text.count(m.old) != 1:
            print(f"mutant {m.name}: its old text occurs {text.count(m.old)} times in {m.file} (expected once)",
                  file=sys.stderr)
            return 2

    tmp = Path(tempfile.mkdtemp(prefix="eenet-mutants-"))
    try:
        repo = copy_tree(tmp)
        print(f"copy of the working tree: {repo}", file=sys.stderr)
        check_imported_from_copy(repo, None)
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in mutants):
                rc, out, secs = run_pytest(repo, tests)
                print(f"baseline {' '.join(tests)}: rc {rc} in {secs:.1f}s", file=sys.stderr)
                if rc != 0:
                    raise Failure(f"the related tests fail without any mutant ({' '.join(tests)}):\n{out[-3000:]}")
        rows = []
        for m in mutants:
            path = repo / m.file
            original = path.read_text(encoding="utf-8")
            try:
                apply(repo, m, original)
                check_imported_from_copy(repo, m)
                rc, out, secs = run_pytest(repo, m.tests)
            finally:
                path.write_text(original, encoding="utf-8")
            if rc in (4, 5):  # usage error / no tests collected: the selection is wrong
                raise Failure(f"mutant {m.name}: pytest exit status {rc} (bad test selection?):\n{out[-2000:]}")
            result = "survived" if rc == 0 else "killed"
            rows.append({"mutant": m, "result": result, "killer": first_failure(out), "seconds": secs})
            print(f"{m.name}: {result} ({secs:.1f}s)", file=sys.stderr)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(table(rows))
    survived = [r["mutant"].name for r in rows if r["result"] == "survived"]
    killed = len(rows) - len(survived)
    print(f"\n{killed} of {len(rows)} mutants killed" + (f"; survived: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
