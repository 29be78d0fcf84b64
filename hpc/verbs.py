"""`hpc-launch VERB ...`: what comes after a launch, for any backend (the manifest names it); and SkyPilot set-up.

    hpc-launch list [--experiments_dir D]        one line per experiment, newest first
    hpc-launch status EXPERIMENT [--wait] [--json] exit 0 all completed, 1 any failed or cancelled, 3 running
    hpc-launch logs EXPERIMENT [JOB] [--task N] [-f]
    hpc-launch cancel EXPERIMENT [JOB]
    hpc-launch retry EXPERIMENT [--wait]

SkyPilot infras (hpc-launch[cloud]):
    hpc-launch providers [NAME] [--check]        the infras, NAME's set-up steps; --check: SkyPilot's credential check
    hpc-launch ssh-pool POOL --host H [--host H ...] --user U --identity_file KEY [--replace] [--file F]
                                                 machines you can ssh to, as SkyPilot's SSH node pool ssh/POOL
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from hpc.errors import run_reporting

VERBS = ("list", "status", "logs", "cancel", "retry", "providers", "ssh-pool")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _action(verb: str, p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], Callable[[], int]]:
    """Declare the verb's arguments on p; return what runs it."""
    from hpc import experiments, logs, retry, status

    if verb == "list":
        experiments.add_list_arguments(p)
        return lambda a: lambda: experiments.list_experiments(a.experiments_dir or experiments.default_dir())
    if verb == "status":
        status.add_arguments(p)
        return lambda a: lambda: status.show(a.experiment_dir, a.wait, a.json)
    if verb == "logs":
        logs.add_arguments(p)
        return lambda a: lambda: logs.show(a.experiment_dir, a.job, a.task, a.follow)
    if verb == "cancel":
        experiments.add_cancel_arguments(p)
        return lambda a: lambda: experiments.cancel(a.experiment_dir, a.job)
    if verb in ("providers", "ssh-pool"):
        from hpc.backends.skypilot import pools, providers

        module = providers if verb == "providers" else pools
        module.add_arguments(p)
        return lambda a: lambda: module.run(a)
    retry.add_arguments(p)
    return lambda a: lambda: retry.retry(a.experiment_dir, a.wait)


def main(verb: str, argv: Sequence[str]) -> int:
    prog = f"hpc-launch {verb}"
    p = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                allow_abbrev=False)
    runner = _action(verb, p)
    args, extra = p.parse_known_args(argv)
    if extra:
        why = ("a retry resubmits the experiment as it was launched; launch anew for other settings"
               if verb == "retry" else "see --help")
        print(f"{prog}: error: {extra[0]} is not an option of {prog}; {why}", file=sys.stderr)
        return 2
    return run_reporting(prog, runner(args))
