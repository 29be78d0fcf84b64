"""Per-process entry for LLaMA-Factory training under torchrun (copied into each experiment).

Usage (by the train job): lf_train.py CONFIG.yaml [key=value ...]  (LLaMA-Factory's own overrides)

- Stop on request: when the batch script gets SIGUSR1 before the time limit, it creates the file
  named by HPC_STOP_REQUEST. Rank 0 looks for it after every step and all ranks agree (one
  all_reduce), so every rank saves the same checkpoint and stops at the same step; rank 0 then
  writes the step to HPC_STOPPED_EARLY so the job knows training is unfinished and requeues.
- Clean exit: after run_exp() returns, the interpreter's teardown can abort (SIGABRT, "terminate
  called without an active exception") in a gloo/NCCL thread, turning a finished run into a failed
  job and leaving other nodes at torchrun's exit barrier. So once training has returned normally,
  flush and leave without that teardown. Errors raised by run_exp() still exit non-zero.
"""

import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from llamafactory.train.tuner import run_exp
from transformers import TrainerCallback


class StopOnRequest(TrainerCallback):
    """Save a checkpoint and stop at a step boundary once the job asks for it."""

    def __init__(self, request: Path, stopped: Path) -> None:
        self.request, self.stopped = request, stopped

    def on_step_end(self, args, state, control, **kwargs):
        wanted = state.is_world_process_zero and self.request.exists()
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([int(wanted)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            wanted = bool(flag.item())
        if wanted:
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                self.stopped.write_text(f"{state.global_step}\n")
        return control


if __name__ == "__main__":
    request, stopped = os.environ.get("HPC_STOP_REQUEST"), os.environ.get("HPC_STOPPED_EARLY")
    callbacks = [StopOnRequest(Path(request), Path(stopped))] if request and stopped else []
    run_exp(callbacks=callbacks)  # reads CONFIG.yaml and key=value overrides from sys.argv
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
