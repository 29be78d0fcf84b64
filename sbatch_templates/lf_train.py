"""Per-process entry for LLaMA-Factory training under torchrun (copied into each experiment).

LLaMA-Factory's run_exp() trains, saves and destroys the process group. After it returns, the
interpreter's own teardown can abort (SIGABRT, "terminate called without an active exception")
in a gloo/NCCL background thread, turning a finished run into a failed job and leaving the other
nodes waiting at torchrun's exit barrier. So once training has returned normally, flush and
leave without that teardown. Errors raised by run_exp() still exit non-zero as usual.
"""

import logging
import os
import sys

from llamafactory.train.tuner import run_exp

if __name__ == "__main__":
    run_exp()  # reads the YAML path from sys.argv[1]
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
