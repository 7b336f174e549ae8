"""Entry point for `ray submit cluster_configs/<name>.yaml train.py -- --config CONFIG [--workers N]`.

`ray submit` copies this one file to the head node and runs it with the head's python, so the
project itself must be installed there (the cluster configs' setup_commands do it). It takes the
same flags as `dmdl train`.
"""

import sys

from dmdl_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
