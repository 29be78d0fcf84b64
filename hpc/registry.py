"""`python -m hpc.registry` / scripts/manual_db_push.py: register a trained model in the team's Supabase database.

  python -m hpc.registry --run_summary EXPERIMENT/run_summary.json [--agent-name A] [--dry_run]
  python -m hpc.registry --hf-model-id org/name --base-model Qwen/Qwen3-8B --dataset-name org/ds \
                         --training-type SFT [--wandb-run entity/project/run_id] [--agent-name A] [--dry_run]

Values come from the flags, then the run summary (hpc/jobside/run_summary.py writes it), then W&B: the run
is read with wandb.Api only for what is still missing (start, end, parameters, the entity). Writes are
upserts on each table's unique `name` (hpc/registry_schema.sql) through supabase-py with the service-role
key: agents, datasets and base_models rows are created by name if missing and never changed otherwise;
the models row gets the columns known here and keeps all others. Nothing has a default: a missing model
name, base model, dataset or training type is an error. Bad input prints one line and exits 2 before
anything is read or written; Supabase or W&B failures exit 1. `--dry_run` prints the exact rows and
touches nothing (no network, no wandb/supabase import). Keys are read from the environment, never printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hpc.errors import LaunchError, run_reporting
from hpc.records import record
from hpc.secret_rule import secret_setting

PROG = "hpc-registry"
TRAINING_TYPES = ("SFT", "RL")
URL_ENV, KEY_ENV, WANDB_KEY_ENV = "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "WANDB_API_KEY"
#: Seconds a request may go unanswered (default 30 each).
SUPABASE_TIMEOUT_ENV, WANDB_TIMEOUT_ENV = "HPC_LAUNCH_SUPABASE_TIMEOUT", "HPC_LAUNCH_WANDB_TIMEOUT"
_SEGMENT = r"[A-Za-z0-9][\w.-]*"
_RUN_PATH = re.compile(rf"({_SEGMENT})/({_SEGMENT})/({_SEGMENT})")
_RUN_URL = re.compile(rf"https?://[^/\s]+(?:/wandb)?/({_SEGMENT})/({_SEGMENT})/runs/({_SEGMENT})(?:[/?#]\S*)?")
#: Reference tables and the models column pointing at each.
REFERENCES = {"agents": "agent_id", "base_models": "base_model_id", "datasets": "dataset_id"}


class ServiceError(LaunchError):
    """Supabase or W&B refused a request or could not be reached: one line, exit 1."""

    exit_code = 1


@record(eq=True)
class WandbRef:
    """A W&B run; `entity` None means the API key's default entity."""

    entity: str | None
    project: str
    run_id: str

    @property
    def path(self) -> str | None:
        return f"{self.entity}/{self.project}/{self.run_id}" if self.entity else None


@record(eq=True)
class ModelRecord:
    """One trained model, as the registry stores it. None = unknown: the column is not sent."""

    name: str
    base_model: str
    datasets: tuple[str, ...]
    training_type: str
    agent_name: str | None = None
    created_by: str | None = None
    creation_location: str | None = None
    weights_location: str | None = None
    training_status: str | None = None
    training_start: str | None = None
    training_end: str | None = None
    training_parameters: dict[str, Any] | None = None
    wandb_run_path: str | None = None
    wandb_link: str | None = None
    description: str | None = None
    slurm_job_id: str | None = None

    def references(self) -> dict[str, list[str]]:
        """Names to look up or create in each reference table."""
        refs = {"agents": [self.agent_name], "base_models": [self.base_model], "datasets": list(self.datasets)}
        return {table: [n for n in names if n] for table, names in refs.items()}

    def row(self, ids: Mapping[str, str]) -> dict[str, Any]:
        """The models row: known columns only, plus the ids of the reference rows (`ids`: table -> id)."""
        skip = {"agent_name", "base_model", "datasets"}
        row = {k: v for k, v in self.__dict__.items() if k not in skip and v is not None}
        row["dataset_names"] = list(self.datasets)
        row.update({REFERENCES[table]: ref_id for table, ref_id in ids.items()})
        return row


@record(eq=True, frozen=False)
class Fields:
    """Values gathered so far (flags > run summary > W&B), before validation."""

    values: dict[str, Any] = field(default_factory=dict)
    wandb: WandbRef | None = None

    def offer(self, key: str, value: Any) -> None:
        """Set `key` unless a source with precedence already did."""
        if value not in (None, "", [], {}) and self.values.get(key) in (None, "", [], {}):
            self.values[key] = value


def scrub(text: str) -> str:
    """One line, without the values of the secret environment variables (nor W&B's Basic-auth form)."""
    for key in (KEY_ENV, WANDB_KEY_ENV):
        secret = os.environ.get(key, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***").replace(base64.b64encode(f"api:{secret}".encode()).decode(), "***")
    return " ".join(text.split())[:400]


def redact(value: Any) -> Any:
    """Training parameters with the values of secret-looking keys (e.g. hf_hub_token) replaced."""
    if isinstance(value, Mapping):
        return {k: "<redacted>" if secret_setting(k, v) else redact(v) for k, v in value.items()}
    return [redact(v) for v in value] if isinstance(value, list) else value


def iso(value: object, what: str) -> str:
    """`value` as ISO 8601 with a UTC offset (naive = UTC); LaunchError if it is not a date-time."""
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise LaunchError(f"{what} {value!r} is not an ISO 8601 date-time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).isoformat()


def parse_run(text: str) -> WandbRef:
    """entity/project/run_id or a run URL (https://wandb.ai/entity/project/runs/run_id)."""
    match = _RUN_PATH.fullmatch(text.strip()) or _RUN_URL.fullmatch(text.strip())
    if not match:
        raise LaunchError(f"--wandb-run {text!r} is not entity/project/run_id (e.g. my-team/my-project/1a2b3c4d) "
                          "or a run URL; the last part is the run id, not its display name")
    return WandbRef(*match.groups())


def split_names(value: object) -> list[str]:
    """A comma list or a list of names."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def gather(args: argparse.Namespace, summary: Mapping[str, Any] | None) -> Fields:
    """Merge the flags and the run summary (flags win)."""
    f = Fields()
    for key, flag in (("name", "hf_model_id"), ("base_model", "base_model"), ("training_type", "training_type"),
                      ("agent_name", "agent_name"), ("created_by", "created_by"), ("description", "description"),
                      ("weights_location", "weights_location")):
        f.offer(key, getattr(args, flag))
    f.offer("datasets", split_names(args.dataset_name))
    if args.wandb_run:
        f.wandb = parse_run(args.wandb_run)
    if summary:
        s = summary
        for key, source in (("name", "model_name"), ("base_model", "base_model"), ("training_type", "training_type"),
                            ("agent_name", "agent_name"), ("created_by", "created_by"),
                            ("creation_location", "cluster"), ("weights_location", "weights_location"),
                            ("training_parameters", "training_parameters"), ("slurm_job_id", "slurm_job_id")):
            f.offer(key, s.get(source))
        f.offer("datasets", split_names(s.get("datasets")))
        f.offer("training_status", "finished")  # the job writes its summary only after training succeeded
        for key in ("training_start", "training_end"):
            if s.get(key):
                f.offer(key, iso(s[key], f"run summary {key}"))
        w = s.get("wandb") or {}
        if f.wandb is None and w.get("project") and w.get("run_id"):
            f.wandb = WandbRef(w.get("entity") or None, str(w["project"]), str(w["run_id"]))
            f.offer("wandb_link", w.get("url"))
    return f


def needs_wandb(f: Fields) -> list[str]:
    """What only W&B can still tell: missing start/end/parameters, or the entity."""
    if f.wandb is None:
        return []
    missing = [k for k in ("training_start", "training_end", "training_parameters") if not f.values.get(k)]
    return missing + (["entity"] if f.wandb.entity is None else [])


def validate(f: Fields) -> ModelRecord:
    """A ModelRecord, or LaunchError naming the first missing/invalid value and the flag that gives it."""
    v = dict(f.values)
    for key, what, flag in (("name", "model name", "--hf-model-id"), ("base_model", "base model", "--base-model"),
                            ("datasets", "dataset", "--dataset-name"),
                            ("training_type", "training type", "--training-type")):
        if not v.get(key):
            raise LaunchError(f"no {what}: pass {flag} (or a --run_summary that has it); nothing has a default")
    kind = str(v["training_type"]).upper()
    if kind not in TRAINING_TYPES:
        raise LaunchError(f"training type {v['training_type']!r} is not one of {', '.join(TRAINING_TYPES)}")
    if v.get("training_parameters"):
        v["training_parameters"] = redact(v["training_parameters"])
    if f.wandb and f.wandb.path:
        v["wandb_run_path"] = f.wandb.path
        v.setdefault("wandb_link", f"https://wandb.ai/{f.wandb.entity}/{f.wandb.project}/runs/{f.wandb.run_id}")
    return ModelRecord(**{**v, "training_type": kind, "datasets": tuple(v["datasets"])})


def add_wandb(f: Fields, api_key: str) -> str:
    """Fill what is missing from the W&B run; returns a one-line report."""
    from hpc.registry_wandb import fetch_run

    ref = f.wandb
    assert ref is not None
    try:
        run = fetch_run(ref.entity, ref.project, ref.run_id, api_key, timeout=service_timeout(WANDB_TIMEOUT_ENV))
    except RuntimeError as exc:
        raise ServiceError(scrub(str(exc))) from None
    entity, project, run_id = run.path.split("/")
    f.wandb = WandbRef(entity, project, run_id)
    f.values["wandb_link"] = run.url
    f.offer("training_start", run.started)
    f.offer("training_end", run.ended)
    f.offer("training_parameters", run.config or None)
    f.values["training_status"] = run.state or f.values.get("training_status")
    return f"W&B run {run.path}: {run.state}, started {run.started}, ended {run.ended}"


def service_timeout(name: str) -> float:
    """Seconds a Supabase or W&B request may go unanswered: $name, else 30."""
    from hpc.jobside.sync import env_seconds

    try:
        return env_seconds(name, 30.0)
    except ValueError as exc:
        raise LaunchError(f"{exc}; unset it or give seconds, e.g. {name}=60") from None


def connect(url: str, key: str) -> Any:
    """A supabase-py client (no network call yet)."""
    try:
        from supabase import ClientOptions, create_client
    except ImportError:
        raise LaunchError("the supabase package is not installed: pip install 'hpc-launch[registry]'") from None
    if not re.match(r"https?://\S+$", url):
        raise LaunchError(f"{URL_ENV} {url!r} is not an http(s) URL (e.g. https://<project>.supabase.co)")
    timeout = service_timeout(SUPABASE_TIMEOUT_ENV)
    try:
        import httpx  # a supabase dependency; its own client sets the timeout (the option for it is deprecated)

        return create_client(url, key, options=ClientOptions(httpx_client=httpx.Client(timeout=timeout)))
    except Exception as exc:
        raise LaunchError(f"cannot make a Supabase client for {URL_ENV}: {scrub(str(exc))}") from None


def upsert(client: Any, table: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """Upsert one row on its unique name (PostgREST merge-duplicates, return=representation); the stored row."""
    from httpx import HTTPError, TimeoutException
    from postgrest import APIError

    try:
        data = client.table(table).upsert(dict(row), on_conflict="name").execute().data
    except APIError as exc:  # PostgREST's {code, message, details, hint}; a non-JSON body gives the HTTP status
        parts = [f"{exc.code}: {exc.message}" if exc.code else str(exc.message)]
        parts += [str(x) for x in (exc.details, exc.hint) if x]
        text = "; ".join(parts)
        if exc.code in ("42501", "PGRST301", "PGRST302") or "api key" in text.lower():
            text += f" ({KEY_ENV} must be the project's service-role key)"
        raise ServiceError(f"Supabase refused the upsert into {table} ({row.get('name')!r}): {scrub(text)}") from None
    except HTTPError as exc:
        hint = f"; wait longer with {SUPABASE_TIMEOUT_ENV}=SECONDS" if isinstance(exc, TimeoutException) else ""
        raise ServiceError(f"cannot reach Supabase at {os.environ.get(URL_ENV, '?')} (upsert into {table}): "
                           f"{scrub(f'{type(exc).__name__}: {exc}')}{hint}") from None
    if not isinstance(data, list) or not data or "id" not in data[0]:
        raise ServiceError(f"Supabase stored {table} {row.get('name')!r} but returned no row with an id "
                           "(a key that RLS hides rows from? use the service-role key)")
    return data[0]


def register(record: ModelRecord, client: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Upsert the reference rows, then the models row; returns (stored model row, reference ids)."""
    ids: dict[str, str] = {}
    for table, names in record.references().items():
        for name in names:
            stored = upsert(client, table, {"name": name})
            ids.setdefault(table, stored["id"])  # datasets: the first one is the model's dataset_id
    return upsert(client, "models", record.row(ids)), ids


def _dry_run(record: ModelRecord, wandb_note: str | None) -> None:
    refs = record.references()
    print(f"{PROG}: dry run: nothing read or written. Would upsert (on_conflict=name), in this order:")
    for table, names in refs.items():
        for name in names:
            print(f"  {table}: {json.dumps({'name': name})}")
    placeholders = {t: f"<id of {t} {names[0]!r}>" for t, names in refs.items() if names}
    print("  models:", json.dumps(record.row(placeholders), indent=2, sort_keys=True).replace("\n", "\n  "))
    if wandb_note:
        print(f"{PROG}: {wandb_note}")


def run(args: argparse.Namespace) -> int:
    from hpc.registry_summary import load_summary

    summary = load_summary(Path(args.run_summary)) if args.run_summary else None
    f = gather(args, summary)
    missing = [] if args.skip_wandb else needs_wandb(f)
    record = validate(f)  # every input check happens before anything is read or written
    if args.dry_run:
        ref = f.wandb
        note = (f"W&B lookup skipped (dry run): {', '.join(missing)} would come from W&B run "
                f"{'/'.join(p for p in (ref.entity, ref.project, ref.run_id) if p)}") if missing and ref else None
        _dry_run(record, note)
        return 0
    url, key = os.environ.get(URL_ENV, ""), os.environ.get(KEY_ENV, "")
    absent = [name for name, value in ((URL_ENV, url), (KEY_ENV, key)) if not value]
    if missing and not os.environ.get(WANDB_KEY_ENV):
        absent.append(f"{WANDB_KEY_ENV} (or pass --skip_wandb)")
    if absent:
        names = ", ".join(absent[:-1]) + (" and " if len(absent) > 1 else "") + absent[-1]
        raise LaunchError(f"{names} {'is' if len(absent) == 1 else 'are'} not set in the environment: source your "
                          "secrets file (the one DC_AGENT_SECRET_ENV names)")
    client = connect(url, key)
    if missing:
        print(f"{PROG}: {add_wandb(f, os.environ[WANDB_KEY_ENV])}")
        record = validate(f)
    stored, _ = register(record, client)
    print(f"{PROG}: registered model {record.name!r} (id {stored['id']}, first registered {stored.get('created_at')})")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _flag(group: argparse._ActionsContainer, name: str, **kwargs: Any) -> None:
    """Every option works as --snake_case and --kebab-case."""
    names = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    group.add_argument(*names, dest=name, **kwargs)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Register a trained model in the team's Supabase model registry "
                "(upsert on the unique model name; columns not given are left alone).",
                epilog=f"Environment: {URL_ENV}, {KEY_ENV} (service-role key) and, for W&B lookups, "
                f"{WANDB_KEY_ENV} (WANDB_BASE_URL for self-hosted W&B): source your secrets file.")
    _flag(p, "run_summary", metavar="PATH",
          help="run_summary.json written by the train job; flags below override its values")
    _flag(p, "hf_model_id", metavar="ORG/NAME", help="model name (unique; the Hub id of the trained model)")
    _flag(p, "base_model", metavar="NAME", help="base model it was trained from, e.g. Qwen/Qwen3-8B")
    _flag(p, "dataset_name", metavar="NAME[,NAME]", help="dataset(s) it was trained on, comma-separated")
    _flag(p, "training_type", metavar="SFT|RL", help=f"one of {', '.join(TRAINING_TYPES)}")
    _flag(p, "agent_name", metavar="NAME", help="agent whose traces it was trained on (optional)")
    _flag(p, "wandb_run", metavar="ENTITY/PROJECT/RUN_ID",
          help="W&B run: entity/project/run_id or its URL; start, end and config come from it")
    _flag(p, "created_by", metavar="NAME", help="user or org that trained it")
    _flag(p, "weights_location", metavar="PATH|URL", help="where the weights are (run summary: the output dir)")
    _flag(p, "description", metavar="TEXT")
    _flag(p, "skip_wandb", action="store_true", help="do not contact W&B; register what is known")
    _flag(p, "dry_run", action="store_true", help="print the exact rows; read and write nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_reporting(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
