"""How big this session's submission is, against the workplace's limit on one submission.

    python scripts/submission_size.py BASE              # BASE: the commit the session started from
    python scripts/submission_size.py BASE --room 100   # exit 1 unless 100 MiB more would still fit

A submission may add up to 256 MiB of diffs, counted as text over all of its commits: a file added
in one commit and changed or removed in a later one counts each time, and a replaced binary file
counts its old and its new bytes. One ResNet-18 ``model.safetensors`` is 44.7 MB, so replacing one
costs about 100 MiB here and a session can land two, not three (a session that replaced three lost
all its work). This script measures each commit in ``BASE..HEAD`` (along first parents), and the
uncommitted changes (all that ``git add -A`` would stage), as the length of ``git diff --binary
--no-renames`` (binary files as base85 of their deflated bytes, both ways), a conservative
stand-in for the workplace's own count, and prints a table. Exit 1 when the total is over
``--budget`` MiB or less than ``--room`` MiB is left; exit 2 on a bad BASE. The default budget,
240 MiB, lets two replaced weight files through (205 MiB by this count: they landed together in
commit acc46e1) and stops a third (308 MiB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def git(*args: str, repo: Path = REPO, env: dict[str, str] | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env).stdout


DIFF = ("diff", "--binary", "--no-renames", "--no-color", "--no-ext-diff")  # a moved file counts too


def commit_bytes(commit: str, repo: Path = REPO) -> int:
    """Length of the binary diff of ``commit`` against its first parent."""
    return len(git(*DIFF, f"{commit}^", commit, repo=repo))


def uncommitted_bytes(repo: Path = REPO) -> int:
    """Length of the binary diff of everything ``git add -A`` would stage (new files included,
    ignored ones left out), against HEAD. It stages into an index of its own, read from HEAD, so
    the real index is left alone and every file is hashed anew (no stat cache to trust)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git("read-tree", "HEAD", repo=repo, env=env)
        git("add", "-A", repo=repo, env=env)
        return len(git(*DIFF, "--cached", "HEAD", repo=repo, env=env))


def submission_rows(base: str, repo: Path = REPO) -> list[tuple[str, int]]:
    """(label, bytes) of each commit in ``base..HEAD`` along the first parents (a merge counts what
    it brings in), oldest first, then of the uncommitted work."""
    commits = git("rev-list", "--reverse", "--first-parent", f"{base}..HEAD", repo=repo).decode().split()
    rows = []
    for commit in commits:
        subject = git("log", "-1", "--format=%h %s", commit, repo=repo).decode().strip()
        rows.append((subject[:70], commit_bytes(commit, repo)))
    rows.append(("(uncommitted)", uncommitted_bytes(repo)))
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
        git("merge-base", "--is-ancestor", args.base, "HEAD", repo=args.repo)
    except subprocess.CalledProcessError:
        print(f"BASE {args.base!r} is not a commit of {args.repo} that HEAD descends from", file=sys.stderr)
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
