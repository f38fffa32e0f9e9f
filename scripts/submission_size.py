"""How big this session's submission is, against the workplace's limit on one submission.

    python scripts/submission_size.py BASE              # BASE: the commit the session started from
    python scripts/submission_size.py BASE --room 100   # exit 1 unless 100 MiB more would still fit

A submission may add up to 256 MiB of diffs, counted as text over all of its commits: a file added
in one commit and changed or removed in a later one counts each time, and a replaced binary file
counts its old and its new bytes. One ResNet-18 ``model.safetensors`` is 44.7 MB, so replacing one
costs about 100 MiB here and a session can land two, not three (a session that replaced three lost
all its work). This script measures each commit in ``BASE..HEAD``, and the uncommitted changes, as
the length of ``git diff --binary`` (binary files as base85 of their deflated bytes, both ways), a
conservative stand-in for the workplace's own count, and prints a table. Exit 1 when the total is
over ``--budget`` MiB or less than ``--room`` MiB is left; exit 2 on a bad BASE. The default budget,
240 MiB, lets two replaced weight files through (205 MiB by this count: they landed together in
commit acc46e1) and stops a third (308 MiB).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def git(*args: str, repo: Path = REPO) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout


def diff_bytes(*revisions: str, repo: Path = REPO) -> int:
    """Length of ``git diff --binary REVISIONS`` (tracked files only)."""
    return len(git("diff", "--binary", "--no-color", "--no-ext-diff", *revisions, repo=repo))


def untracked_bytes(repo: Path = REPO) -> int:
    """Bytes of the files git would add that it does not track yet (ignored files left out)."""
    names = git("ls-files", "--others", "--exclude-standard", "-z", repo=repo).split(b"\0")
    return sum((repo / name.decode()).stat().st_size for name in names if name)


def submission_rows(base: str, repo: Path = REPO) -> list[tuple[str, int]]:
    """(label, bytes) of each commit in ``base..HEAD``, oldest first, then of the uncommitted work."""
    commits = git("rev-list", "--reverse", "--first-parent", f"{base}..HEAD", repo=repo).decode().split()
    rows = []
    for commit in commits:
        subject = git("log", "-1", "--format=%h %s", commit, repo=repo).decode().strip()
        rows.append((subject[:70], diff_bytes(f"{commit}^", commit, repo=repo)))
    rows.append(("(uncommitted)", diff_bytes("HEAD", repo=repo) + untracked_bytes(repo)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the commit this session started from (its first HEAD)")
    parser.add_argument("--budget", type=float, default=240.0, help="MiB this session may submit")
    parser.add_argument("--room", type=float, default=0.0, help="MiB that must still fit")
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    try:
        git("rev-parse", "--verify", f"{args.base}^{{commit}}", repo=args.repo)
    except subprocess.CalledProcessError:
        print(f"BASE {args.base!r} is not a commit of {args.repo}", file=sys.stderr)
        return 2
    rows = submission_rows(args.base, args.repo)
    total = sum(size for _, size in rows)
    print("| commit | MiB |\n|---|---:|")
    for label, size in rows:
        print(f"| {label} | {size / MIB:.2f} |")
    left = args.budget - total / MIB
    print(f"| total (budget {args.budget:.0f} MiB, {left:.1f} left) | {total / MIB:.2f} |")
    if left < args.room:
        print(
            f"this submission needs {args.room:.1f} MiB more but has {left:.1f} MiB left of {args.budget:.0f}: "
            "commit and land what is here first",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
