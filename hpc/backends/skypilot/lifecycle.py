"""The SkyPilot side of a launch: the only module that imports `sky` (on first use: it costs ~2 s and writes ~/.sky).

Tasks are checked offline, launched (or exec'd on a cluster that is up), their logs streamed to the console and the
experiment's log file, the real exit code read from the log (SkyPilot reports 100 for any failure), outputs synced
back, and the cluster torn down with --down, however the launch ends (error, timeout, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from hpc.errors import BackendError, LaunchError
from hpc.manifest import State

#: SkyPilot's job states -> ours.
STATES = {"INIT": State.PENDING, "PENDING": State.PENDING, "SETTING_UP": State.PENDING, "RUNNING": State.RUNNING,
          "SUCCEEDED": State.COMPLETED, "FAILED": State.FAILED, "FAILED_SETUP": State.FAILED,
          "FAILED_DRIVER": State.FAILED, "FAILED_PRECHECKS": State.FAILED, "CANCELLED": State.CANCELLED}
_RETURN_CODES = re.compile(r"failed with return code list:\s*\[([^\]]*)\]|setup failed with return code (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class SkyPilotError(BackendError):
    """SkyPilot refused or failed a request; the message carries its words."""


class Interrupted(BackendError):
    """Ctrl-C during a launch (after the cleanup it calls for)."""

    exit_code = 130


def sky(needed_by: str = "--backend skypilot") -> Any:
    try:
        import sky as module
    except ImportError:
        raise LaunchError(f"{needed_by} needs SkyPilot: pip install 'hpc-launch[cloud]'") from None
    return module


def first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def check_offline(key: str, config: dict) -> None:
    """SkyPilot's own parser on the task (unknown keys, infra names, bad counts, comma strings), offline."""
    try:
        sky().Task.from_yaml_config(config)
    except Exception as exc:  # SkyPilot raises ValueError, AssertionError, its own exceptions, ...
        raise LaunchError(f"SkyPilot refused the {key} task: {first_line(exc)}") from None


def task(config: dict, secrets: dict[str, str]) -> Any:
    made = sky().Task.from_yaml_config(config)
    if secrets:
        made.update_secrets(secrets)
    return made


def optimizer_choice(config: dict) -> str:
    """The optimizer's table for the task (a dry-run launch: nothing is provisioned); asks the API server."""
    s = sky()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            s.stream_and_get(s.launch(task(config, {}), cluster_name="hpc-dry-run", dryrun=True), output_stream=out)
    except Exception as exc:
        raise SkyPilotError(f"the SkyPilot optimizer found no resources for the task: {first_line(exc)}") from None
    lines = [ln.rstrip() for ln in _ANSI.sub("", out.getvalue()).splitlines()]
    table = [ln for ln in lines if ln.startswith((" INFRA", " Slurm", "---")) or "✔" in ln or "$" in ln]
    return "\n".join(table or lines[-10:])


def cluster_up(cluster: str) -> bool:
    """Whether the cluster exists and is UP (`sky status NAME`: never a bare status)."""
    s = sky()
    try:
        records = s.get(s.status(cluster_names=[cluster]))
    except Exception as exc:
        raise SkyPilotError(f"sky status {cluster} failed: {first_line(exc)}") from None
    return any(str(getattr(r, "status", None) or r.get("status")).endswith("UP") for r in records)


class _Tee(io.TextIOBase):
    """Writes to the console as it comes, and without colour codes to the job's log file."""

    def __init__(self, log: TextIO, console: TextIO) -> None:
        self.log, self.console = log, console

    def write(self, text: str) -> int:
        self.console.write(text)
        self.console.flush()
        self.log.write(_ANSI.sub("", text))
        self.log.flush()
        return len(text)


def _in_thread(action: Callable[[], Any], deadline: float | None) -> tuple[bool, Any]:
    """Run `action` in a thread so that a deadline and Ctrl-C can cut the wait: (finished, result)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = action()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False, None
        thread.join(1.0 if left is None else min(1.0, left))
    if "error" in box:
        raise box["error"]
    return True, box.get("result")


def _without_sizes(resources: dict) -> dict:
    if "ordered" in resources or "any_of" in resources:
        return {key: [_without_sizes(r) for r in value] for key, value in resources.items()}
    return {key: value for key, value in resources.items() if key not in ("cpus", "memory")}


class Session:
    """One launch's conversation with SkyPilot: launch or exec, follow, sync, tear down."""

    def __init__(self, cluster: str, deadline: float | None) -> None:
        self.cluster, self.deadline, self.request = cluster, deadline, None

    def start(self, config: dict, secrets: dict[str, str], reuse: bool, down: bool) -> int:
        """Submit the task (exec on the cluster when it is up, else launch it); its SkyPilot job id."""
        s = sky()
        if reuse:  # the cluster's machines are what they are: the job takes its GPUs, not the sizes asked at launch
            config = {**config, "resources": _without_sizes(config.get("resources", {}))}
        made = task(config, secrets)
        self.request = s.exec(made, cluster_name=self.cluster) if reuse else s.launch(made, cluster_name=self.cluster,
                                                                                     down=down)
        finished, answer = _in_thread(lambda: s.stream_and_get(self.request, output_stream=sys.stdout), self.deadline)
        if not finished:
            raise TimeoutError
        job_id, _handle = answer
        if job_id is None:
            raise SkyPilotError(f"SkyPilot submitted no job on {self.cluster}")
        return int(job_id)

    def follow(self, job_id: int, log: Path) -> bool:
        """Stream the job's output to the console and `log` until it ends (False: the deadline came first)."""
        s = sky()
        with open(log, "a") as out:
            tee = _Tee(out, sys.stdout)
            finished, _ = _in_thread(lambda: s.tail_logs(self.cluster, job_id, follow=True, output_stream=tee),
                                     self.deadline)
        return finished

    def cancel_request(self) -> None:
        """Stop a launch still provisioning (a no-op once it has finished)."""
        if self.request is not None:
            with contextlib.suppress(Exception):
                sky().get(sky().api_cancel(self.request, silent=True))


def job_states(cluster: str, job_ids: list[int]) -> dict[int, str] | None:
    """SkyPilot's word for each job of the cluster; None when the cluster is gone (torn down, or never up)."""
    s = sky()
    try:
        found = s.get(s.job_status(cluster, job_ids))
    except (s.exceptions.ClusterDoesNotExist, s.exceptions.ClusterNotUpError):
        return None
    except Exception as exc:
        raise SkyPilotError(f"sky job status on {cluster} failed: {first_line(exc)}") from None
    return {int(k): str(v.value if hasattr(v, "value") else v) for k, v in found.items() if v is not None}


def cancel(cluster: str, job_ids: list[int]) -> None:
    s = sky()
    try:
        s.get(s.cancel(cluster, job_ids=job_ids))
    except (s.exceptions.ClusterDoesNotExist, s.exceptions.ClusterNotUpError):
        return
    except Exception as exc:
        raise SkyPilotError(f"sky cancel {cluster} {' '.join(map(str, job_ids))} failed: {first_line(exc)}") from None


def down(cluster: str) -> str | None:
    """Tear the cluster down; None when done (or already gone), else SkyPilot's complaint."""
    s = sky()
    try:
        s.get(s.down(cluster))
    except s.exceptions.ClusterDoesNotExist:
        return None
    except Exception as exc:
        return first_line(exc)
    return None


def real_exit_code(log: Path, status: str) -> str:
    """The job's own exit code, from its log (SkyPilot's return code is 100 for any failure): the first non-zero
    of 'failed with return code list: [...]' (nodes' codes), 0 when it succeeded, '' when the log does not say."""
    if status == "SUCCEEDED":
        return "0"
    try:
        found = _RETURN_CODES.findall(log.read_text(errors="replace"))
    except OSError:
        return ""
    codes = [c.strip() for c in (",".join(found[-1]).split(",") if found else []) if c.strip()]
    failed = [c for c in codes if c != "0"]  # a node killed (143, 137) because another failed is not the cause
    return next((c for c in failed if c not in ("137", "143")), failed[0] if failed else codes[0] if codes else "")


@contextlib.contextmanager
def ignore_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not cut a teardown short."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def sync_back(cluster: str, remote: str, local: Path, exclude: tuple[str, ...] = ()) -> str | None:
    """rsync the head node's `remote` directory (relative to its home) into `local`; None when done, else why not."""
    from sky.client.cli import command as cli  # writes the cluster's ssh config and key, as `sky status NAME` does

    try:
        cli._get_cluster_records_and_set_ssh_config([cluster])
    except Exception as exc:
        return first_line(exc)
    generated = Path(os.path.expanduser("~/.sky/generated"))
    ssh = f"ssh -F {generated / 'ssh' / cluster} -i {generated / 'ssh-keys' / f'{cluster}.key'}"
    local.mkdir(parents=True, exist_ok=True)
    skip = [f"--exclude={pattern}" for pattern in exclude]
    proc = subprocess.run(["rsync", "-az", *skip, "-e", ssh, f"{cluster}:{remote.rstrip('/')}/", f"{local}/"],
                          capture_output=True, text=True, timeout=600)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"rsync exit {proc.returncode}"])[-1]
