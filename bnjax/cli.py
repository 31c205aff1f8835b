"""The `bnjax` command: parses flags and dispatches; the work lives in the modules below it.

    bnjax train       --config=configs/cifar10.py --workdir=DIR [--config.FIELD=VALUE ...]
                      [--multi_process | --coordinator_address=H:P --num_processes=N
                       --process_id=I]
    bnjax summary     --config=configs/cifar10.py[:MODEL]
    bnjax export      --workdir=DIR --out=FILE [--step=N]
    bnjax eval        --export=FILE [--data_source=PATH]
    bnjax materialize --export=FILE --out=DIR
    bnjax sweep       --config=... --grid='train.mode=bn,output;seed=0,1' --workdir=ROOT
                      [--launcher=local|print]
    bnjax aggregate   --workdir=ROOT
    bnjax analyze     --workdir=DIR[,DIR2,...] | --export=FILE[,FILE2] --out=DIR
    bnjax bench       --config=configs/cifar10.py[:MODEL] [--config.FIELD=VALUE ...]

Wrong input (a bad flag, config field, dataset or file) prints one clear line and exits with
status 2; a run that cannot go on (a non-finite loss, a failed save) exits with 3; a run stopped
by SIGTERM/SIGINT saves a checkpoint and exits with 128 + the signal number.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnjax.errors import BnjaxError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/cifar10.py or "
    "configs/cifar10.py:cifar_resnet_110; override any field with --config.FIELD=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: logs, TensorBoard, checkpoints, "
                                "metrics.json. Training there again resumes the run.")
_EXPORT = flags.DEFINE_string("export", None, "An export file made by `bnjax export`.")
_OUT = flags.DEFINE_string("out", None, "Where `export` writes its file / `materialize` its "
                           "folder.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
_DATA_SOURCE = flags.DEFINE_string("data_source", None, "Evaluate on this data source instead "
                                   "of the one recorded in the export.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "train: set a run already in --workdir aside "
                               "(renamed to <workdir>.replaced-<time>) and start over.")
_BRANCH = flags.DEFINE_bool("branch", False, "train: continue the latest checkpoint in "
                            "--workdir although the config changed (e.g. a lower lr).")
_GRID = flags.DEFINE_string("grid", None, "Sweep grid: FIELD=V1,V2;FIELD=V1,... "
                            "(tuples as 2/3).")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print"], "Sweep: run the points "
                              "here one after another, or print their commands.")
_STOP_AT_STEP = flags.DEFINE_integer("stop_at_step", None, "Save a checkpoint after this "
                                     "global step (or the end of the train.steps_per_call call "
                                     "that reaches it) and exit; rerun to continue (for "
                                     "time-limited job slots).")

_MULTI_PROCESS = flags.DEFINE_bool("multi_process", False, "train: one of several processes "
                                   "(one per host) that JAX finds itself: a TPU pod slice, a "
                                   "Slurm job step, an MPI launch.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train, multi-process: host:port "
                                   "of process 0, naming the processes explicitly.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train, multi-process: how many "
                                      "processes (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train, multi-process: this process's "
                                   "number, 0 .. num_processes - 1.")

USAGE = __doc__.split("\n\n")[1]
EXIT_USAGE = 2


def _fail(message: str, status: int = EXIT_USAGE) -> None:
    print(f"bnjax: error: {message}", file=sys.stderr)
    sys.exit(status)


def _require_flag(value, name: str, example: str):
    if value is None:
        _fail(f"--{name} is required, e.g. {example}")
    return value


def _config():
    config = _require_flag(_CONFIG.value, "config", "--config=configs/cifar10.py")
    try:
        config.keys()  # config_flags reports a config file that failed to load on first use
    except OSError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        _fail(f"--config: {lines[-1]} (give a file such as configs/cifar10.py)")
    return config


def cmd_train() -> None:
    from bnjax import distributed, train  # imports jax: keep `bnjax --help` instant

    workdir = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/resnet20_bn")
    config = _config()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _MULTI_PROCESS.value)
    try:
        train.train_and_evaluate(config, workdir, stop_at_step=_STOP_AT_STEP.value,
                                 overwrite=_OVERWRITE.value, branch=_BRANCH.value)
    except train.Interrupted as stop:
        logging.info("%s", stop)
        # 128 + signal number, as if killed by it, so schedulers treat the job as preempted
        sys.exit(128 + stop.signum if stop.signum else 0)


def cmd_export() -> None:
    from bnjax import export

    workdir = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/resnet20_bn")
    out = _require_flag(_OUT.value, "out", "--out=resnet20_bn.bnjax")
    result = export.export_from_workdir(workdir, out, _STEP.value)
    print(f"wrote {out}: step {result['step']}, {result['bytes']:,} bytes")


def cmd_eval() -> None:
    from bnjax import export

    path = _require_flag(_EXPORT.value, "export", "--export=resnet20_bn.bnjax")
    print(json.dumps(export.evaluate_export(path, _DATA_SOURCE.value)))


def cmd_materialize() -> None:
    from bnjax import export

    path = _require_flag(_EXPORT.value, "export", "--export=resnet20_bn.bnjax")
    out = _require_flag(_OUT.value, "out", "--out=resnet20_bn_full")
    print(f"wrote every weight to {export.materialize(path, out)}")


def cmd_summary() -> None:
    from bnjax import summary

    print(summary.render(_config()))


def cmd_sweep() -> None:
    from bnjax import sweep

    root = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/sweep1")
    grid = _require_flag(_GRID.value, "grid", "--grid='train.mode=bn,output;seed=0,1'")
    config = _config()
    sweep.run_sweep(config, grid, root, _LAUNCHER.value,
                    config_flags.get_config_filename(flags.FLAGS["config"]),
                    config_flags.get_override_values(flags.FLAGS["config"]))


def cmd_aggregate() -> None:
    from bnjax import sweep

    root = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/sweep1")
    rows = sweep.aggregate(root)
    print(open(f"{root}/results.md").read(), end="")
    print(f"{len(rows)} runs; wrote results.csv, results.md, accuracy_vs_trainable.png in {root}")


def cmd_analyze() -> None:
    from bnjax import analyze, export

    if bool(_WORKDIR.value) == bool(_EXPORT.value):
        _fail("give --workdir=DIR[,DIR2] or --export=FILE[,FILE2] (one of them)")
    out = _require_flag(_OUT.value, "out", "--out=analysis")
    if _WORKDIR.value:
        models = [export.load_from_workdir(w) for w in _WORKDIR.value.split(",")]
    else:
        models = [export.load_export(e) for e in _EXPORT.value.split(",")]
    results = [analyze.analyze(m, _DATA_SOURCE.value) for m in models]
    analyze.write_outputs(results, out)
    print(analyze.report(results), end="")
    print(f"wrote report.md, gamma_histograms.png, ablation.png, ablation.csv in {out}")


def cmd_bench() -> None:
    from bnjax import bench
    from bnjax import config as config_lib

    config = _config()
    config_lib.validate(config)
    print(bench.render(bench.run_bench(config)))


COMMANDS = {"train": cmd_train, "summary": cmd_summary, "export": cmd_export, "eval": cmd_eval,
            "materialize": cmd_materialize, "sweep": cmd_sweep, "aggregate": cmd_aggregate,
            "analyze": cmd_analyze, "bench": cmd_bench}


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(f"{error}\n(see `bnjax --helpfull` for every flag)")
    except (AttributeError, KeyError) as error:  # config_flags: a --config.FIELD that isn't one
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        text = str(error)
        hint = text[text.index("Did you mean"):].rstrip("'\"") if "Did you mean" in text else ""
        _fail(f"unknown config field in {' '.join(overrides)}. {hint}")


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        _fail(f"expected one command of {', '.join(COMMANDS)}; usage:\n{USAGE}")
    logging.set_verbosity(logging.INFO)
    from bnjax.metrics import quiet_library_logs

    quiet_library_logs()
    try:
        COMMANDS[argv[1]]()
    except BnjaxError as error:
        _fail(str(error), error.exit_status)


def run() -> None:
    app.run(main, flags_parser=parse_flags)
