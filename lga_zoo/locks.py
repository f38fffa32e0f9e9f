"""One writer per output: a lock file holding the writer's PID, taken with ``os.O_EXCL``.

``lga-zoo train`` holds ``OUT/.lga-zoo.lock`` and ``lga-zoo evaluate`` holds ``.RESULTS.lock`` beside
its results JSON while they run; a second run into the same place is refused, naming the holder's
PID. A lock left by a process that no longer runs (a crash, kill -9) is taken over. Folders created
for the lock are removed again when the run leaves them empty (an early failure leaves nothing).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lga-zoo.lock"


class OutputLocked(RuntimeError):
    """Another living process writes into the same place."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    for path in missing:
        for existing in path.parents:
            if existing.exists() and not existing.is_dir():
                raise ValueError(
                    f"cannot write in {str(folder)!r}: {str(existing)!r} is a file, not a folder"
                )
        path.mkdir(exist_ok=True)
    return missing


def _take(lock: Path, what: str) -> None:
    """Create ``lock`` holding this PID, taking over the lock of a dead process."""
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and pid_alive(holder):
                raise OutputLocked(
                    f"{what} is in use by another lga-zoo run (PID {holder}, lock file {lock}); wait for it to "
                    "end, or choose another output"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as file:
            file.write(f"{os.getpid()}\n")
        return
    raise OutputLocked(f"could not take the lock {lock} of {what}: other runs keep taking it")


@contextlib.contextmanager
def holding(lock: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the lock file ``lock`` for the block (``what`` names the output in the messages).

    Args:
        lock: the lock file's path; its folder is created when missing.
        what: the output the lock guards, as a message names it.

    Returns:
        A context manager giving the lock's path. It raises :class:`OutputLocked` when a living
        process holds the lock, and ``ValueError`` when the folder cannot be written (read-only,
        no permission), before any work starts. On exit the lock is removed, and so are the
        folders it created that the block left empty.
    """
    lock = Path(lock)
    try:
        created = _create_folders(lock.parent)
        _take(lock, what)
    except OSError as err:
        raise ValueError(f"cannot write {what}: {err.strerror or err} ({lock.parent})") from None
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
