"""scripts/submission_size.py: a replaced binary counts its old and new bytes, each commit since the
base and the uncommitted work are counted, and the exit code says whether more still fits."""

import os
import subprocess
from pathlib import Path

from conftest import load_file_module

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _git(repo, *args):
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env).stdout


def test_replaced_weights_count_both_ways_and_the_budget_stops_a_third(tmp_path, capsys):
    size = load_file_module("scripts/submission_size.py")
    _git(tmp_path, "init", "-q")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(MIB))  # random bytes do not deflate: like float weights
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "start")
    base = _git(tmp_path, "rev-parse", "HEAD").decode().strip()

    weights.write_bytes(os.urandom(MIB))
    _git(tmp_path, "commit", "-qam", "replace the weights")
    (tmp_path / "notes.txt").write_text("x" * 1000)  # untracked, not ignored: part of the submission
    rows = size.submission_rows(base, tmp_path)
    assert [label.split(" ", 1)[1] for label, _ in rows[:-1]] == ["replace the weights"]
    replaced = rows[0][1]
    assert 2 * 1.2 * MIB < replaced < 2 * 1.35 * MIB  # old and new bytes, base85 lines (67/52) of each
    assert 1000 < rows[-1][1] < 1300 and rows[-1][0] == "(uncommitted)"  # the new text file's diff
    assert _git(tmp_path, "status", "--porcelain") == b"?? notes.txt\n"  # the real index left alone

    _git(tmp_path, "mv", "model.safetensors", "moved.safetensors")  # a move counts as remove + add
    assert size.submission_rows(base, tmp_path)[-1][1] > 2 * 1.2 * MIB
    _git(tmp_path, "mv", "moved.safetensors", "model.safetensors")

    assert size.main([base, "--repo", str(tmp_path), "--budget", "5", "--room", "2.4"]) == 0
    assert size.main([base, "--repo", str(tmp_path), "--budget", "5", "--room", "2.6"]) == 1
    assert "needs 2.6 MiB more but has 2.4 MiB left of 5" in capsys.readouterr().err
    weights.write_bytes(os.urandom(MIB))  # a second replacement, not committed yet, counts too
    assert size.main([base, "--repo", str(tmp_path), "--budget", "5", "--room", "2.4"]) == 1
    assert size.main(["no-such-commit", "--repo", str(tmp_path)]) == 2
    _git(tmp_path, "checkout", "-q", "--orphan", "elsewhere")
    _git(tmp_path, "commit", "-qm", "unrelated")
    assert size.main([base, "--repo", str(tmp_path)]) == 2  # HEAD does not descend from BASE
