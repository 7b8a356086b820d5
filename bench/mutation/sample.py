"""Keep a seeded uniform sample of a cosmic-ray session's pending mutants; mark the others skipped.

    python bench/mutation/sample.py rules-and-passes.sqlite --count 50 --seed 0

For a module set too large to run whole (all of relgraph/rules and relgraph/passes: about 12,000 mutants,
weeks on two cores), the kill rate of a uniform random sample estimates the whole one's; with n mutants
and k killed, the 95 % Wilson interval is printed by ``--report`` after ``cosmic-ray exec``. The sample is a
function of the code's mutants and the seed alone, so another session of the same revision draws it again.
"""

import argparse
import math
import random
import sqlite3


def pending(db) -> list[str]:
    """The job ids with no result yet, ordered by what each mutates (module, operator, occurrence, position):
    job ids are drawn at random by ``cosmic-ray init``, the mutations are not, so the same seed picks the same
    mutants from any session made of the same code."""
    done = {row[0] for row in db.execute("select job_id from work_results")}
    specs = db.execute("select module_path, operator_name, occurrence, start_pos_row, start_pos_col, job_id "
                       "from mutation_specs").fetchall()
    return [spec[-1] for spec in sorted(specs) if spec[-1] not in done]


def keep_sample(db, count: int, seed: int) -> tuple[int, int]:
    jobs = pending(db)
    keep = set(random.Random(seed).sample(jobs, min(count, len(jobs))))
    db.executemany("insert into work_results (worker_outcome, output, test_outcome, diff, job_id) "
                   "values ('SKIPPED', 'not in the sample', NULL, '', ?)", [(j,) for j in jobs if j not in keep])
    db.commit()
    return len(keep), len(jobs)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def report(db) -> None:
    rows = db.execute("select test_outcome, count(*) from work_results where output != 'not in the sample' "
                      "and worker_outcome != 'SKIPPED' group by 1").fetchall()
    counts = dict(rows)
    killed, survived = counts.get("KILLED", 0), counts.get("SURVIVED", 0)
    n = killed + survived
    low, high = wilson(killed, n) if n else (0.0, 0.0)
    print(f"{n} mutants run ({counts}): {killed} killed, {survived} survived, kill rate "
          f"{killed / max(n, 1):.0%} (95 % interval {low:.0%}–{high:.0%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("session")
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="print the sample's kill rate instead")
    args = p.parse_args()
    db = sqlite3.connect(args.session)
    if args.report:
        report(db)
        return
    kept, total = keep_sample(db, args.count, args.seed)
    print(f"kept {kept} of {total} pending mutants (seed {args.seed})")


if __name__ == "__main__":
    main()
