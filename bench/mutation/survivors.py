"""The surviving mutants of a cosmic-ray session, and whether the tests of this revision kill them.

    python bench/mutation/survivors.py registry.sqlite                 # one line per survivor
    python bench/mutation/survivors.py registry.sqlite --replay CONFIG # in a throwaway clone: apply each
                                                                       # survivor, run CONFIG's test command

A survivor is either killed by a test added since the session ran, or equivalent (bench/RESULTS.md says why).
"""

import argparse
import sqlite3
import subprocess
import tomllib


def survivors(session: str) -> list[str]:
    """Each surviving mutant's diff."""
    db = sqlite3.connect(session)
    columns = [row[1] for row in db.execute("pragma table_info(work_results)")]
    rows = (dict(zip(columns, row)) for row in db.execute("select * from work_results"))
    return [r["diff"] for r in rows if r["test_outcome"] == "SURVIVED"]


def changed_lines(diff: str) -> str:
    return " | ".join(line.strip() for line in diff.splitlines()
                      if line.startswith(("+", "-")) and not line.startswith(("+++", "---")))


def replay(diff: str, test_command: str) -> str:
    """Apply one mutant to the working tree, run the tests, restore: "killed", "SURVIVES", or "gone" where the
    mutated code is no longer there."""
    patch = diff.split("\n", 1)[1].rstrip("\n") + "\n"  # below cosmic-ray's "--- mutation diff ---" line
    if subprocess.run(["git", "apply", "-"], input=patch, text=True, capture_output=True).returncode != 0:
        return "gone"
    try:
        failed = subprocess.run(test_command, shell=True, capture_output=True).returncode != 0
        return "killed" if failed else "SURVIVES"
    finally:  # take back exactly the mutant: nothing else in the working tree is touched
        subprocess.run(["git", "apply", "-R", "-"], input=patch, text=True, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("session")
    p.add_argument("--replay", metavar="CONFIG", help="the cosmic-ray config whose test command to run")
    args = p.parse_args()
    command = None
    if args.replay:
        with open(args.replay, "rb") as f:
            command = tomllib.load(f)["cosmic-ray"]["test-command"]
    for i, diff in enumerate(survivors(args.session), 1):
        verdict = "" if command is None else f"{replay(diff, command):8}"
        print(i, verdict, changed_lines(diff), flush=True)


if __name__ == "__main__":
    main()
