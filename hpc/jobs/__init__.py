"""The job types: what each launches and which function plans it (imported only when that type runs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from hpc.records import record

if TYPE_CHECKING:
    from hpc.backends import Limits
    from hpc.options import LaunchOptions
    from hpc.spec import Plan


@record(eq=False)
class JobType:
    """A job type: its --job_type name, its line in --help, and the module that plans it."""

    name: str
    help: str
    module: str  # its build_plan(opts, environ, limits) -> Plan

    def build(self, opts: "LaunchOptions", environ: Mapping[str, str], limits: Callable[[], "Limits"]) -> "Plan":
        return importlib.import_module(self.module).build_plan(opts, environ, limits)


JOB_TYPES = {
    t.name: t
    for t in (
        JobType("train", "LLaMA-Factory SFT on one or more nodes, optionally then consolidate and eval",
                "hpc.jobs.train"),
        JobType("datagen", "task generation, then traces in chunks, with an optional inference server",
                "hpc.jobs.datagen"),
        JobType("consolidate", "DeepSpeed ZeRO checkpoint -> safetensors, optionally uploaded, then eval",
                "hpc.jobs.consolidate"),
        JobType("eval", "lm_eval (or the profile's eval_command) on an existing model: --eval_model DIR|org/name",
                "hpc.jobs.evaluate"),
        JobType("run", "any command: --command \"...\" [--workdir DIR] (benchmarks, examples)", "hpc.jobs.run"),
    )
}
