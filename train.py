"""Entry point for `ray submit cluster_configs/<name>.yaml train.py -- --config CONFIG [--workers N]`.

`ray submit` copies this one file to the head node and runs it with the head's python, so the
project itself must be installed there (the cluster configs' setup_commands do it). It takes the
same flags as `dmdl train`, and joins the cluster it was submitted to (`--address auto`, the Ray
running on the head) unless --address, dist.address or RAY_ADDRESS names another.
"""

import os
import sys

from dmdl_dist.cli import main

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")  # the lowest-precedence way to say it: flags and config win
    sys.exit(main(["train", *sys.argv[1:]]))
