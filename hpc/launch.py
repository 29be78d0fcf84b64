"""`python -m hpc.launch` / `hpc-launch`: plan a launch, write its experiment directory, submit it.

The CLI is a thin layer, built from the option dataclasses (hpc.options): the job type plans the
launch (pure), the backend materializes and submits it, the manifest records it. User mistakes print
one line and exit 2; refusals by the scheduler exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import fields

from hpc import __version__
from hpc.errors import LaunchError, printable, run_reporting
from hpc.jobs import JOB_TYPES
from hpc.options import GROUPS, HELP_ALWAYS, HELP_BY_BACKEND, HELP_BY_JOB_TYPE, LaunchOptions, parse_float


class _Parser(argparse.ArgumentParser):
    """Options are --snake_case; their --kebab-case spellings are rewritten before parsing, so that --help lists
    each option once and the parser holds one action per option."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def, override]
        words = list(sys.argv[1:] if args is None else args)
        end = words.index("--") if "--" in words else len(words)
        return super().parse_known_args([_snake(w, self._option_string_actions) for w in words[:end]] + words[end:],
                                        namespace)

    def error(self, message: str) -> typing.NoReturn:  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {printable(message)} (see --help)\n")


def _snake(word: str, options: Mapping[str, object]) -> str:
    """--kebab-case[=V] (and --no-kebab-case) as the option it spells; anything else as it is."""
    if not word.startswith("--") or "-" not in word[2:].partition("=")[0]:
        return word
    name, eq, value = word[2:].partition("=")
    for prefix in ("", "no-"):
        if name.startswith(prefix) and (spelled := f"--{prefix}{name[len(prefix):].replace('-', '_')}") in options:
            return spelled + eq + value
    return word


def _add(group: argparse._ActionsContainer, f, listed: bool = True) -> None:
    """One option, --snake_case (options.py evaluates its annotations: f.type is the type); unlisted ones are
    accepted but left out of --help."""
    spec = dict(f.metadata.get("argparse", {}))
    kind = f.type
    kwargs: dict[str, object] = {"dest": f.name, "help": f.metadata.get("help") if listed else argparse.SUPPRESS}
    if spec.pop("optional_bool", False):  # --x / --no-x (for bool, or bool | None with None = automatic)
        kwargs.update(action=argparse.BooleanOptionalAction, default=None)
    elif kind is bool:
        kwargs.update(action="store_true", default=None)
    else:
        given = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
        kwargs.update(type=spec.pop("type", None) or (parse_float if given is float else given), default=None)
    kwargs.update(spec)
    group.add_argument(f"--{f.name}", **kwargs)  # type: ignore[arg-type]


def parser(shown: Collection[type] = GROUPS) -> argparse.ArgumentParser:
    """The launch parser: every option is accepted; only those of the `shown` groups are listed by --help."""
    p = _Parser(prog="hpc-launch", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
                usage="hpc-launch [--job_type TYPE] [--backend slurm|skypilot] [OPTIONS]\n"
                      "       hpc-launch VERB ... (list, status, logs, cancel, retry, providers, ssh-pool)",
                description="Turn ML work into jobs on this cluster (SLURM) or on clouds (SkyPilot).",
                epilog=_HELP_EPILOG)
    p.add_argument("--version", action="version", version=f"hpc-launch {__version__}")
    for cls in GROUPS:
        group = p.add_argument_group(cls.__doc__) if cls in shown else p
        for f in fields(cls):
            if f.name == "job_type":
                group.add_argument("--job_type", dest="job_type", choices=tuple(JOB_TYPES), default=None,
                                   help="what to launch (default: train)")
            else:
                _add(group, f, listed=cls in shown)
    return p


_HELP_EPILOG = (
    "job types (hpc-launch --job_type TYPE --help lists its options):\n"
    + "".join(f"  {t.name:<12} {t.help}\n" for t in JOB_TYPES.values())
    + "backends: slurm (default) | skypilot (hpc-launch --backend skypilot --help lists the cloud options)\n"
    "after a launch: hpc-launch list | status EXP | logs EXP [JOB] | cancel EXP [JOB] | retry EXP "
    "(hpc-launch VERB --help)\nclouds: hpc-launch providers [NAME] [--check] | ssh-pool POOL --host H ...\n"
    "docs: README.md and docs/ in the repository")


def help_groups(argv: Sequence[str]) -> tuple[type, ...]:
    """The option groups `hpc-launch ... --help` lists, by the --job_type and --backend given with it."""
    def value(flag: str) -> str | None:
        for i, word in enumerate(argv):
            if word == flag and i + 1 < len(argv):
                return argv[i + 1]
            if word.startswith(flag + "="):
                return word.split("=", 1)[1]
        return None

    job_type, backend = value("--job_type") or value("--job-type"), value("--backend")
    return (*HELP_ALWAYS, *HELP_BY_JOB_TYPE.get(job_type or "", ()), *HELP_BY_BACKEND.get(backend or "", ()))


def options_from_args(args: argparse.Namespace) -> LaunchOptions:
    """Flags that were given; the rest keep the dataclass defaults."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    return LaunchOptions(**given)


def run(opts: LaunchOptions, environ: Mapping[str, str] = os.environ) -> int:
    from hpc import backends
    from hpc.experiment import check_target, write_experiment
    from hpc.manifest import Manifest
    from hpc.secret_rule import check_output

    if opts.backend == "skypilot":
        from hpc.backends.skypilot import prepare_launch

        opts, environ = prepare_launch(opts, environ)
    backend = backends.get(opts.backend, opts)
    plan = JOB_TYPES[opts.job_type].build(opts, environ, lambda: backend.limits(opts.dry_run))
    materialized = backend.materialize(plan)
    for rel, text in {**plan.files, **materialized.files}.items():
        check_output(f"the experiment's {rel}", text, environ)  # its directory's name may hold the secret
    check_target(plan.experiment_dir)
    backend.validate(plan, materialized, opts.validate, opts.dry_run)  # before anything is written
    manifest = Manifest.for_plan(plan, backend.name, materialized.scripts, materialized.arrays, opts.dry_run)
    write_experiment(plan, materialized, manifest)
    print(f"hpc-launch: cluster {plan.cluster}, experiment directory {plan.experiment_dir}")
    for note in plan.notes:
        print(f"hpc-launch: note: {printable(note)}")
    if opts.dry_run:
        print(printable(materialized.preview(), lines=True), end="")
        print(f"\nhpc-launch: dry run: nothing submitted; scripts and manifest are in {plan.experiment_dir}")
        return 0
    backend.submit(plan, materialized, manifest)
    for record in manifest.jobs:
        print(f"  {record.key}: job {record.job_id} ({' '.join(record.submit_argv or [])})")
    print(f"hpc-launch: logs in {plan.experiment_dir / 'logs'}")
    if not opts.wait and opts.backend == "slurm":  # a SkyPilot launch has followed its jobs to the end
        return 0
    from hpc.status import wait_and_report

    return wait_and_report(plan.experiment_dir)


def main(argv: Sequence[str] | None = None) -> int:
    from hpc.upstream import translate
    from hpc.verbs import VERBS

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in VERBS:
        from hpc import verbs

        return verbs.main(argv[0], argv[1:])
    p = parser()
    known = {action.dest for action in p._actions}
    switches = {a.dest for a in p._actions if isinstance(a, argparse.BooleanOptionalAction)}
    try:
        argv = translate(argv, known, switches)
    except LaunchError as exc:
        print(f"hpc-launch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if any(word in ("-h", "--help") for word in argv[:argv.index("--") if "--" in argv else len(argv)]):
        p = parser(help_groups(argv))
    args = p.parse_args(argv)
    return run_reporting("hpc-launch", lambda: run(options_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())

