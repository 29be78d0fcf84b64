"""`hpc-launch providers [NAME] [--check]`: the infras SkyPilot launches on, how to set one up, and whether SkyPilot
finds its credentials.

The list is SkyPilot's own registry of clouds; the set-up steps are data (providers.yaml, for the infras ML jobs use
most); the check is SkyPilot's (`sky check NAME`, asked of its API server, which is started if need be).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import yaml

from hpc.errors import LaunchError
from hpc.records import record

SETUP = Path(__file__).parent / "providers.yaml"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@record(eq=True)
class Provider:
    """How to set up one infra."""

    name: str
    summary: str
    steps: tuple[str, ...]
    docs: str


@record(eq=True)
class Guide:
    """providers.yaml: SkyPilot's installation guide, and the steps of the infras we document."""

    docs: str
    providers: dict[str, Provider]

    @classmethod
    def load(cls, path: Path = SETUP) -> "Guide":
        data = yaml.safe_load(path.read_text())
        return cls(data["docs"], {name: Provider(name, entry["summary"], tuple(entry["steps"]),
                                                 entry.get("docs", data["docs"]))
                                  for name, entry in data["providers"].items()})


def _clouds() -> Any:
    """SkyPilot's registry of clouds (importing SkyPilot)."""
    from hpc.backends.skypilot.lifecycle import sky

    sky("hpc-launch providers")
    from sky.utils import registry as sky_registry

    return sky_registry.CLOUD_REGISTRY


def registry() -> dict[str, str]:
    """SkyPilot's infras: lower-case name -> its display name (AWS, Lambda, ...)."""
    return {name: repr(cloud) for name, cloud in sorted(_clouds().items())}


def canonical(name: str) -> str:
    """SkyPilot's name for an infra given by name or alias (k8s -> kubernetes)."""
    clouds = _clouds()
    try:
        cloud = clouds.from_str(name)
    except ValueError:
        cloud = None
    if cloud is None:
        raise LaunchError(f"{name!r} is not an infra SkyPilot knows; see: hpc-launch providers")
    return next(key for key, value in clouds.items() if value is cloud)


def show_list() -> int:
    infras, guide = registry(), Guide.load()
    width = max(map(len, infras))
    print("Infras SkyPilot launches on (hpc-launch providers NAME: how to set one up; --check: is it enabled):")
    for name in [*[n for n in infras if n in guide.providers], *[n for n in infras if n not in guide.providers]]:
        provider = guide.providers.get(name)
        print(f"  {name:<{width}}  {provider.summary if provider else infras[name] + ' (see SkyPilot guide)'}")
    print(f"Use one with --backend skypilot --cloud-provider NAME; SkyPilot's guide: {guide.docs}")
    return 0


def show_setup(name: str) -> int:
    """The infra's set-up steps (no SkyPilot needed for those in providers.yaml)."""
    guide = Guide.load()
    provider = guide.providers.get(name.lower())
    if provider is None:
        name = canonical(name)
        provider = guide.providers.get(name)
    if provider is None:
        print(f"{name}: follow SkyPilot's guide: {guide.docs}\nthen: hpc-launch providers {name} --check")
        return 0
    print(f"{provider.name}: {provider.summary}")
    for number, step in enumerate(provider.steps, 1):
        print(f"  {number}. {step}")
    print(f"  {len(provider.steps) + 1}. hpc-launch providers {provider.name} --check   # SkyPilot's sky check")
    print(f"More: {provider.docs}")
    return 0


def _cloud_lines(text: str, display: str) -> list[str]:
    """SkyPilot's lines about one infra in `sky check` output: its status line and the indented ones under it."""
    lines = [_ANSI.sub("", line).rstrip() for line in text.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{display}: ")), None)
    if start is None:
        return [line for line in lines if line.strip()][-5:]
    found = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        found.append(line)
    return found


def check(name: str) -> int:
    """SkyPilot's credential check of one infra: 0 when enabled, else 1 with SkyPilot's reason."""
    from hpc.backends.skypilot.lifecycle import SkyPilotError, first_line

    key = canonical(name)
    display = registry()[key]
    from sky.client import sdk

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = sdk.stream_and_get(sdk.check(infra_list=(key,), verbose=False), output_stream=out)
    except Exception as exc:  # SkyPilot raises its own exceptions, ValueError, connection errors, ...
        raise SkyPilotError(f"sky check {key} failed: {first_line(exc)}") from None
    enabled = any(display in (clouds or {}) and clouds[display] for clouds in (result or {}).values())
    for line in _cloud_lines(out.getvalue(), display):
        print(line)
    if enabled:
        print(f"hpc-launch: {key} is enabled: --backend skypilot --cloud-provider {key}")
        return 0
    print(f"hpc-launch: {key} is not enabled; set it up: hpc-launch providers {key}")
    return 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", metavar="NAME", help="an infra (aws, gcp, lambda, ssh, slurm, ...)")
    p.add_argument("--check", action="store_true",
                   help="ask SkyPilot whether NAME's credentials work (exit 0 enabled, 1 not)")


def run(args: argparse.Namespace) -> int:
    if args.check and not args.name:
        raise LaunchError("--check needs NAME (e.g. hpc-launch providers aws --check)")
    if args.check:
        return check(args.name)
    return show_setup(args.name) if args.name else show_list()
