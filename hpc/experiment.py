"""The experiment directory: written in one step (built aside, then renamed into place)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import typing
from pathlib import Path

from hpc import manifest as manifests
from hpc.backends import Materialized
from hpc.errors import LaunchError
from hpc.manifest import Manifest
from hpc.spec import Plan


def check_target(target: Path) -> None:
    """An experiment directory may replace only one left by an earlier dry run."""
    if target.exists():
        old = manifests.read(target) if (target / manifests.FILE).exists() else None
        if old is None or not old.dry_run or old.submitted:
            raise LaunchError(f"experiment directory {target} already exists; choose another --job_name")


def write_experiment(plan: Plan, materialized: Materialized, manifest: Manifest) -> None:
    """Write the plan's files, the backend's scripts, the links and the manifest.

    A directory left by an earlier dry run is replaced; one whose jobs were submitted is refused.
    """
    target = plan.experiment_dir
    check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise LaunchError(f"cannot create the experiment directory in {target.parent} ({exc.strerror}); choose "
                          "another --experiments_dir") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
        for rel, text in {**plan.files, **materialized.files}.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for rel, link_target in plan.links.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(link_target)
        (staging / "logs").mkdir()
        manifest.write(staging)
        _claim(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise LaunchError(f"cannot write the experiment directory {target} ({exc.strerror}); free space or choose "
                          "another --experiments_dir") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _claim(staging: Path, target: Path) -> None:
    """Rename the built directory into place under a lock on its name, so that of two launches with the same
    name exactly one wins. A dry run's directory is moved aside first (and removed after)."""
    import fcntl

    lock_path = target.with_name(f".{target.name}.lock")
    with _open_lock(lock_path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LaunchError(f"experiment directory {target} is being created by another launch; choose another "
                              "--job_name") from None
        try:
            check_target(target)
            old = target.with_name(f".{target.name}.replaced-{os.getpid()}") if target.exists() else None
            if old is not None:
                os.rename(target, old)
            os.rename(staging, target)
        finally:
            lock_path.unlink(missing_ok=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _open_lock(path: Path) -> typing.IO[bytes]:
    """The lock file, created if needed, never through a link or onto a pipe or device someone else planted in a
    shared experiments directory."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise LaunchError(f"cannot create the lock file {path} ({_lock_problem(exc)}); remove it or choose another "
                          "--experiments_dir") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LaunchError(f"lock file {path} is not a regular file; remove it or choose another --experiments_dir")
    return os.fdopen(fd, "wb")


def _lock_problem(exc: OSError) -> str:
    return "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or type(exc).__name__
