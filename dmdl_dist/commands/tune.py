"""`dmdl tune`: a Ray Tune sweep of Ray Train runs (dmdl_dist/tuning/)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def add_parsers(sub) -> None:
    from dmdl_dist.config import PRESETS

    p = sub.add_parser("tune", help="a Ray Tune sweep (ASHA on epochs) of Ray Train runs over a search space",
                       description="Searches the space of a tune/*.yaml file; every trial is a Ray Train run "
                                   "scored by its validation metric on held-out training identities.")
    p.add_argument("--space", type=Path, required=True, help="search-space YAML, e.g. tune/cai.yaml")
    p.add_argument("--samples", type=int, default=8, help="trials drawn from the space (times each grid point)")
    p.add_argument("--workers-per-trial", type=int, default=None,
                   help="Ray Train workers per trial (default: dist.workers, or 1 when that is 0)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at a time (default: as many as the cluster's CPUs/GPUs hold)")
    p.add_argument("--preset", choices=PRESETS, default=None, help="base preset (default: the space's base, synthvi)")
    p.add_argument("--config", type=Path, default=None, help="YAML file applied on top of the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of the base config, e.g. --set train.stage2_epochs=4 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="sweeps folder (default: <run.out_dir>/tune)")
    p.add_argument("--name", default=None, help="sweep name (default: space, preset and time)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep --out/--name")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="join this Ray cluster (default: dist.address, else RAY_ADDRESS, else start a private one)")
    p.add_argument("--search", choices=("random", "optuna"), default="random",
                   help="random draws (and grids), or Optuna's TPE (needs the optuna extra; no grids)")
    p.add_argument("--rank", choices=("final", "best"), default="final",
                   help="rank trials on the metric at their final epoch (default) or their best epoch")
    p.add_argument("--stage1", default=None, metavar="RUN_DIR|CKPT",
                   help="for a space of stage-2 keys: start every trial's stage 2 from this finished stage 1 "
                        "(a run trained with train.stage2_epochs=0) instead of training one")
    p.add_argument("--confirm-seeds", type=int, default=0, metavar="N",
                   help="after the sweep, train the best config with N other seeds and report mean +- std")


def cmd_tune(args: argparse.Namespace) -> int:
    from dmdl_dist.config import ConfigError, to_dict
    from dmdl_dist.distributed.launcher import connect
    from dmdl_dist.distributed.progress import trial_printer
    from dmdl_dist.logs import FOLDER, log_file
    from dmdl_dist.tuning.results import SweepError, records_from_grid, stage1_savings, write_results
    from dmdl_dist.tuning.schedule import max_epochs
    from dmdl_dist.tuning.search import check_search
    from dmdl_dist.tuning.space import load_space
    from dmdl_dist.tuning.sweep import Sweep, check_sweep, prepare_base, run_sweep, unfinished_trials

    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if args.confirm_seeds < 0:
        raise ConfigError(f"--confirm-seeds must be 0 or more, got {args.confirm_seeds}")
    if args.resume and args.name is None:
        raise ConfigError("--resume needs the --name of the sweep to continue")
    space = load_space(args.space)
    base = prepare_base(space, preset=args.preset, config_file=args.config, overrides=args.overrides,
                        workers=args.workers_per_trial)
    name = args.name or f"{args.space.stem}-{base.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep = Sweep(name=name, out=args.out or Path(base.run.out_dir) / "tune", base=base, space=space,
                  samples=args.samples, max_concurrent=args.max_concurrent, search=args.search,
                  stage1_given=args.stage1)
    # A missing optional extra or a bad --stage1 fails before Ray starts (a resumed sweep keeps its stage 1).
    if args.resume:
        check_search(sweep.search, space)
    else:
        check_sweep(sweep)
    with log_file(sweep.folder / FOLDER, "driver") as log:
        where = connect(args.address or base.dist.address, bind=base.dist.bind)
        print(f"dmdl tune: {where} (log: {log.parent}/)", file=sys.stderr)
        verbose = getattr(args, "verbose", False)
        if not verbose:  # Tune's new console output prints its settings table even at verbose=0; the old one does not
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        grid = run_sweep(sweep, resume=args.resume, verbose=int(verbose),
                         callbacks=[] if verbose else [trial_printer(max_epochs(space, base))])
    left = unfinished_trials(sweep, grid)
    if left:
        print(f"dmdl tune: {left} trial(s) unfinished (interrupted); continue with the same arguments and "
              f"--name {name} --resume", file=sys.stderr)
        return 130
    records = records_from_grid(grid, sweep.folder / "runs")
    results = dict(metric=space.metric, mode=space.mode, name=name, space_file=str(args.space), rank=args.rank,
                   stage1=sweep.stage1)
    try:
        best = write_results(sweep.folder, records, to_dict(sweep.base), **results)
    except SweepError as err:
        print(f"dmdl tune: error: {err}", file=sys.stderr)
        return 1
    print(f"\nbest trial {best['trial_id']}: {args.rank} {space.metric} {best['score']:.2f}")
    if sweep.stage1 is not None:
        trained, whole = stage1_savings(records, sweep.stage1)
        print(f"shared stage 1 ({sweep.stage1.path}): {trained} epochs trained instead of {whole}")
    if args.confirm_seeds:
        confirmation = confirm(sweep, records, best, args)
        write_results(sweep.folder, records, to_dict(sweep.base), confirmation=confirmation.line(), **results)
        print(confirmation.line())
    print(f"{sweep.folder / 'summary.md'}\n{sweep.folder / 'best_config.yaml'}")
    return 0


def confirm(sweep, records, best: dict, args: argparse.Namespace):
    """--confirm-seeds: the best trial's config trained again, whole runs, with other seeds."""
    from dmdl_dist.config import to_dict
    from dmdl_dist.tuning.confirm import confirm_seeds
    from dmdl_dist.tuning.sweep import sized

    params = next(r.params for r in records if r.trial_id == best["trial_id"])
    print(f"confirming trial {best['trial_id']} with {args.confirm_seeds} other seed(s)")
    return confirm_seeds(to_dict(sweep.base), params, n=args.confirm_seeds, folder=sweep.folder,
                         experiment=sweep.experiment, metric=sweep.space.metric, mode=sweep.space.mode,
                         rank=args.rank, sweep_value=best["score"],
                         max_concurrent=sized(sweep.base, args.confirm_seeds, args.max_concurrent))


COMMANDS = {"tune": cmd_tune}
