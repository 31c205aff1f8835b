"""The `bnjax` command: one subcommand per task, each with its own flags; the work lives in the
modules below it.

Flags are absl flags and experiments are ml_collections config files with --config.FIELD=VALUE
overrides, as across the JAX ecosystem. `bnjax --help` lists the commands, `bnjax COMMAND --help`
shows one command's flags; a flag another command owns is refused. Wrong input (a bad flag,
config field, dataset or file) prints one clear line and exits with status 2; a run that cannot
go on (a non-finite loss, a failed save) exits with 3; a run stopped by SIGTERM/SIGINT saves a
checkpoint and exits with 128 + the signal number.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as pylogging
import os
import sys
import textwrap
import threading
from collections.abc import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from bnjax import xla_flags
from bnjax.errors import BnjaxError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/cifar10.py or "
    "configs/cifar10.py:cifar_resnet_110; override any field with --config.FIELD=VALUE.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder (run.json, logs, TensorBoard, "
                               "checkpoints, metrics.json).")
_EXPORT = flags.DEFINE_string("export", None, "An export file made by `bnjax export`.")
_EXPORTS = flags.DEFINE_string("exports", None, "bundle: the exports and bundles to merge, "
                               "comma-separated.")
_NAMES = flags.DEFINE_string("names", None, "bundle: one task name per export, "
                             "comma-separated ('' for a bundle: its tasks keep their names).")
_TASK = flags.DEFINE_string("task", None, "A bundle's task (default: every task, each on its "
                            "recorded data).")
_BASE = flags.DEFINE_string("base", None, "Where the base export (model.base) of a run trained "
                            "on one lies now, if not at its recorded path or beside --export; "
                            "its sha256 must match.")
_OUT = flags.DEFINE_string("out", None, "Where the command writes its file or folder.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
_FORMAT = flags.DEFINE_enum("format", "orbax", ["orbax", "safetensors"], "materialize: an "
                            "Orbax checkpoint folder, or one safetensors file (PyTorch reads "
                            "it).")
_LAYOUT = flags.DEFINE_enum("layout", "torch", ["torch", "bnjax"], "materialize "
                            "--format=safetensors: PyTorch's names and layouts (open_lth's "
                            "CIFAR models, torchvision's ImageNet ResNets) or bnjax's paths.")
_DATA_SOURCE = flags.DEFINE_string("data_source", None, "Evaluate on this data source instead "
                                   "of the one recorded in the run.")
_BY_STAGE = flags.DEFINE_float("by_stage", None, "analyze: also zero this fraction of the "
                                "smallest gammas (ranked over the whole network) in one stage "
                                "at a time, e.g. 0.5: which stages an ablation's loss comes "
                                "from.")
_BY_BLOCK = flags.DEFINE_float("by_block", None, "analyze: as --by_stage, one residual block "
                                "(a VGG: one layer) at a time.")
_BY_LAYER = flags.DEFINE_float("by_layer", None, "analyze: as --by_stage, one normalisation "
                                "layer (a block's bn1, bn2, shortcut_bn) at a time.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Set a run already in --workdir aside "
                               "(renamed to <workdir>.replaced-<time>) and start over.")
_BRANCH = flags.DEFINE_bool("branch", False, "Continue the latest checkpoint in --workdir "
                            "although the config changed (e.g. a lower lr).")
_STOP_AT_STEP = flags.DEFINE_integer("stop_at_step", None, "Save a checkpoint after this "
                                     "global step (or the end of the train.steps_per_call call "
                                     "that reaches it) and exit 0; rerun to continue.")
_GRID = flags.DEFINE_string("grid", None, "FIELD=V1,V2;FIELD=V1,...: every combination of "
                            "the values is a run. A tuple's elements are joined by '/', e.g. "
                            "train.lr_milestones=80/120,40/60.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "print"], "Run the points here "
                              "one after another, or print their commands.")
_REPLICAS = flags.DEFINE_integer("replicas", 1, "How many runs form one compiled program.")
_GROUP = flags.DEFINE_integer("group", None, "sweep: run only this group (1-based) of the "
                              "sweep's plan, e.g. one group per machine.")
_BENCH_SEEDS = flags.DEFINE_enum("bench_seeds", "same", ["same", "different"], "bench with "
                                 "--replicas: replicas of one seed (sharing the frozen weights "
                                 "and the batch) or of K seeds.")
_REPLICA_LAYOUT = flags.DEFINE_enum("replica_layout", "auto", ["auto", "sequential", "vmap"],
                                    "bench with --replicas: one program called for each "
                                    "replica in turn (sequential) or one vmapped program; "
                                    "auto: sequential on CPU, vmap on accelerators.")
_MULTI_PROCESS = flags.DEFINE_bool("multi_process", False, "One of several processes (one per "
                                   "host) that JAX finds itself: a TPU pod slice, a Slurm job "
                                   "step, an MPI launch.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of "
                                   "process 0, naming the processes explicitly.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: how many "
                                      "processes (one per host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's number, "
                                   "0 .. num_processes - 1.")

_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Every command: also print the "
                                  "libraries' INFO lines (Orbax's, one per file operation); "
                                  "their warnings are always printed.")
_EVERY_COMMAND = ("library_logs",)

EXIT_USAGE = 2
_CONFIG_FIELDS_NOTE = ("Every config field is a flag --config.FIELD=VALUE; "
                       "`bnjax config --config=FILE` lists them with their values and meanings.")


@dataclasses.dataclass(frozen=True)
class Command:
    run: Callable[[], None]
    summary: str  # one line, for `bnjax --help`
    flags: tuple[str, ...]  # the absl flags it takes; 'config' includes --config.FIELD
    example: str
    help: dict = dataclasses.field(default_factory=dict)  # this command's text for a flag


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
    from bnjax import distributed, multitask, train  # imports jax: keep `bnjax --help` instant

    workdir = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/resnet20_bn")
    config = _config()
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _MULTI_PROCESS.value)
    with _exit_quietly_when_stopped():
        if config.data.tasks:
            multitask.train_tasks(config, workdir, stop_at_step=_STOP_AT_STEP.value,
                              overwrite=_OVERWRITE.value, branch=_BRANCH.value)
        else:
            train.train_and_evaluate(config, workdir, stop_at_step=_STOP_AT_STEP.value,
                                     overwrite=_OVERWRITE.value, branch=_BRANCH.value)


@contextlib.contextmanager
def _exit_quietly_when_stopped():
    """A stopped run (SIGTERM, --stop_at_step) logs one line and exits; no traceback."""
    from bnjax import train

    try:
        yield
    except train.Interrupted as stop:
        logging.info("%s", stop)
        # 128 + signal number, as if killed by it, so schedulers treat the job as preempted
        sys.exit(128 + stop.signum if stop.signum else 0)


def cmd_config() -> None:
    from bnjax import config as config_lib

    config = _config()
    config_lib.validate(config)
    print(config_lib.describe_fields(config))


def cmd_summary() -> None:
    from bnjax import summary

    print(summary.render(_config()))


def cmd_export() -> None:
    from bnjax import trained

    workdir = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/resnet20_bn")
    out = _require_flag(_OUT.value, "out", "--out=resnet20_bn.bnjax")
    result = trained.export_workdir(workdir, out, _STEP.value)
    if "tasks" not in result:
        print(f"wrote {out}: step {result['step']}, {result['bytes']:,} bytes")
        return
    print(f"wrote {out}: {len(result['tasks'])} tasks, {result['bytes']:,} bytes "
          f"(shared header {result['header_bytes']:,})")
    for name, task in result["tasks"].items():
        print(f"  {name}: step {task['step']}, {task['bytes']:,} bytes")


def cmd_bundle() -> None:
    from bnjax import trained

    paths = _require_flag(_EXPORTS.value, "exports", "--exports=a.bnjax,b.bnjax").split(",")
    names = _require_flag(_NAMES.value, "names", "--names=cifar10,mnist").split(",")
    out = _require_flag(_OUT.value, "out", "--out=ab.bnjax")
    result = trained.bundle_exports(paths, names, out)
    print(f"wrote {out}: {len(result['tasks'])} tasks, {result['bytes']:,} bytes (shared "
          f"header {result['header']:,})")
    for name, size in result["tasks"].items():
        print(f"  {name}: {size:,} bytes")


def cmd_eval() -> None:
    from bnjax import trained

    if _CONFIG.value is not None:  # a config's model before training (e.g. on a base file)
        if _EXPORT.value:
            _fail("give --export=FILE or --config=FILE (its model before training), not both")
        config = _config()
        if _DATA_SOURCE.value:
            config.data.source = _DATA_SOURCE.value
        print(json.dumps(trained.evaluate_config(config)))
        return
    path = _require_flag(_EXPORT.value, "export", "--export=resnet20_bn.bnjax")
    for result in trained.evaluate_tasks(path, _DATA_SOURCE.value, _TASK.value, _BASE.value):
        print(json.dumps(result))


def cmd_materialize() -> None:
    from bnjax import trained

    if bool(_WORKDIR.value) == bool(_EXPORT.value):
        _fail("give --export=FILE or --workdir=DIR (its latest checkpoint, or --step), one of "
              "them")
    out = _require_flag(_OUT.value, "out", "--out=resnet20_bn_full")
    if _FORMAT.value == "orbax" and out.endswith(".safetensors"):
        _fail(f"--out={out} names a safetensors file; add --format=safetensors (or give a "
              "folder for the Orbax checkpoint)")
    if _EXPORT.value:
        source = _EXPORT.value
        model = trained.from_export(source, _TASK.value, _BASE.value)
    else:
        model = trained.from_workdir(_WORKDIR.value, _STEP.value)
        source = f"{_WORKDIR.value} (checkpoint step {model.description['step']})"
    if _FORMAT.value == "safetensors":
        trained.write_safetensors(model, out, _LAYOUT.value, source)
        print(f"wrote every weight of {source} to {out} ({os.path.getsize(out):,} bytes)")
    else:
        print(f"wrote every weight of {source} to {trained.write_orbax(model, out)}")


def cmd_sweep() -> None:
    from bnjax import sweep

    root = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/sweep1")
    grid = _require_flag(_GRID.value, "grid", "--grid='train.mode=bn,output;seed=0,1'")
    config = _config()
    with _exit_quietly_when_stopped():
        sweep.run_sweep(config, grid, root, _LAUNCHER.value,
                        config_flags.get_config_filename(flags.FLAGS["config"]),
                        config_flags.get_override_values(flags.FLAGS["config"]),
                        _REPLICAS.value, _GROUP.value)


def cmd_aggregate() -> None:
    from bnjax import sweep

    root = _require_flag(_WORKDIR.value, "workdir", "--workdir=runs/sweep1")
    rows = sweep.aggregate(root)
    print(open(f"{root}/results.md").read(), end="")
    print(f"{len(rows)} runs; wrote results.csv, results.md and the plots in {root}")


def cmd_analyze() -> None:
    from bnjax import analyze, trained

    if bool(_WORKDIR.value) == bool(_EXPORT.value):
        _fail("give --workdir=DIR[,DIR2] or --export=FILE[,FILE2] (one of them)")
    out = _require_flag(_OUT.value, "out", "--out=analysis")
    for holder in (_BY_STAGE, _BY_BLOCK, _BY_LAYER):
        if holder.value is not None and not 0 < holder.value <= 1:
            _fail(f"--{holder.name}={holder.value} is not a fraction of the gammas; give a "
                  f"number in (0, 1], e.g. --{holder.name}=0.5")
    if _WORKDIR.value:
        models = [trained.from_workdir(w) for w in _WORKDIR.value.split(",")]
    else:
        models = [trained.from_export(e) for e in _EXPORT.value.split(",")]
    results = [analyze.analyze(m, _DATA_SOURCE.value, _BY_STAGE.value, _BY_BLOCK.value,
                               _BY_LAYER.value)
               for m in models]
    analyze.write_outputs(results, out)
    print(analyze.report(results), end="")
    print(f"wrote report.md, gamma_histograms.png, ablation.png, ablation.csv in {out}")


def cmd_bench() -> None:
    from bnjax import bench
    from bnjax import config as config_lib

    config = _config()
    config_lib.validate(config)
    print(bench.render(bench.run_bench(config, replicas=_REPLICAS.value,
                                       same_seed=_BENCH_SEEDS.value == "same",
                                       layout=_REPLICA_LAYOUT.value)))


_MULTI = ("multi_process", "coordinator_address", "num_processes", "process_id")
COMMANDS = {
    "train": Command(
        cmd_train, "train (or resume) a run in --workdir",
        ("config", "workdir", "overwrite", "branch", "stop_at_step") + _MULTI,
        "bnjax train --config=configs/cifar10.py:cifar_resnet_14 --workdir=runs/r14_bn "
        "--config.data.source=data/cifar10-jpeg.tar.gz",
        {"workdir": "The run folder (run.json, logs, TensorBoard, checkpoints, metrics.json); "
                    "training there again resumes the run. With config.data.tasks: a folder "
                    "holding one run folder per task."}),
    "config": Command(
        cmd_config, "print every config field with its value and meaning", ("config",),
        "bnjax config --config=configs/cifar10.py:cifar_resnet_110 --config.train.mode=all"),
    "summary": Command(
        cmd_summary, "parameter counts of a model, trainable per training mode", ("config",),
        "bnjax summary --config=configs/cifar10.py:cifar_resnet_110"),
    "export": Command(
        cmd_export, "write a run's seed-plus-BN file (a few kilobytes; tasks: one bundle)",
        ("workdir", "out", "step"),
        "bnjax export --workdir=runs/r14_bn --out=r14_bn.bnjax",
        {"workdir": "The run folder to export (a multi-task run's folder: every task, as one "
                    "bundle).", "out": "The export file to write (replaced atomically)."}),
    "bundle": Command(
        cmd_bundle, "merge exports and bundles of one seed and model into one bundle",
        ("exports", "names", "out"),
        "bnjax bundle --exports=cifar10.bnjax,mnist.bnjax --names=cifar10,mnist "
        "--out=both.bnjax"),
    "eval": Command(
        cmd_eval, "test loss and accuracy of an export (a bundle: per task), weights "
        "regenerated from its seed; or of a config's model before training",
        ("export", "data_source", "task", "base", "config"),
        "bnjax eval --export=r14_bn.bnjax --data_source=data/cifar10-jpeg.tar.gz",
        {"config": "Instead of an export: this config's model before any training (weights "
                   "from its seed, or from its model.base), on its data's test split."}),
    "materialize": Command(
        cmd_materialize, "write every weight of an export or a run as an Orbax checkpoint or "
        "a safetensors file PyTorch loads",
        ("export", "workdir", "step", "out", "task", "base", "format", "layout"),
        "bnjax materialize --export=r14_bn.bnjax --out=r14_bn.safetensors --format=safetensors",
        {"out": "--format=orbax: a new (or empty) folder for the checkpoint and model.json; "
                "safetensors: the file to write.",
         "workdir": "A run folder: its latest checkpoint (or --step)."}),
    "sweep": Command(
        cmd_sweep, "run (or print) a grid of runs over any config fields, then aggregate",
        ("config", "workdir", "grid", "launcher", "replicas", "group"),
        "bnjax sweep --config=configs/cifar10.py --grid='train.lr=0.1,0.3,1,3' "
        "--workdir=runs/lr_sweep --replicas=4",
        {"workdir": "The sweep's folder: a run folder per grid point, named by its values, "
                    "and the aggregated results; running the sweep again resumes its runs.",
         "replicas": "Train up to this many grid points that differ only in lr, weight decay, "
                     "momentum, lr scales, bn_init or seed as replicas of one compiled "
                     "program."}),
    "aggregate": Command(
        cmd_aggregate, "collect a sweep's metrics into a table and a plot", ("workdir",),
        "bnjax aggregate --workdir=runs/sweep1",
        {"workdir": "The sweep's folder (or any folder of run folders): writes results.csv, "
                    "results.md and accuracy_vs_<field>.png there."}),
    "analyze": Command(
        cmd_analyze, "gamma histograms, disabled channels and the gamma-zeroing ablation",
        ("workdir", "export", "out", "data_source", "by_stage", "by_block", "by_layer"),
        "bnjax analyze --export=r14_bn.bnjax --out=analysis_r14 "
        "--data_source=data/cifar10-jpeg.tar.gz",
        {"workdir": "Run folders to analyze (their newest checkpoints), comma-separated.",
         "export": "Export files to analyze, comma-separated."}),
    "bench": Command(
        cmd_bench, "train, eval and input-pipeline images/s of a config on this machine",
        ("config", "replicas", "bench_seeds", "replica_layout"),
        "bnjax bench --config=configs/cifar10.py:cifar_resnet_20",
        {"replicas": "Time this many replicas of the config as one program (seeds 0..K-1 with "
                     "--bench_seeds=different)."}),
}


def _wrap(text: str, indent: str) -> str:
    return textwrap.fill(text, 96, initial_indent=indent, subsequent_indent=indent)


def overview() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: bnjax COMMAND [--flag=value ...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`bnjax COMMAND --help` shows a command's flags and an example."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    command = COMMANDS[name]
    lines = [f"bnjax {name}: {command.summary}", "", "flags:"]
    for flag in command.flags:
        holder = flags.FLAGS[flag]
        default = "" if holder.default is None or flag == "config" else \
            f" (default: {holder.default})"
        lines += [f"  --{flag}{default}", _wrap(command.help.get(flag, holder.help), "      ")]
    if "config" in command.flags:
        lines += ["", _wrap(_CONFIG_FIELDS_NOTE, "")]
    if name == "train":
        lines += ["", _wrap("Multi-process flags apply only to runs of several processes; a "
                            "single process drives every local accelerator by itself.", "")]
    lines += ["", "example:", f"  {command.example}"]
    return "\n".join(lines)


def _refuse_foreign(name: str, foreign: list[str]) -> None:
    if foreign:
        owned = COMMANDS[name].flags
        _fail(f"`bnjax {name}` does not take {', '.join(foreign)}; it takes: "
              + " ".join(f"--{flag}" for flag in owned)
              + (" --config.FIELD=VALUE" if "config" in owned else ""))


def _foreign_flags(name: str) -> list[str]:
    """bnjax flags given on the command line that `name` does not take (after parsing)."""
    owned = set(COMMANDS[name].flags) | set(_EVERY_COMMAND)
    bnjax_flags = {flag.name for flag in flags.FLAGS.get_flags_for_module(sys.modules[__name__])}
    given = [flag for flag in bnjax_flags | {"config"} if flags.FLAGS[flag].present]
    return sorted(f"--{flag}" for flag in given if flag not in owned)


def parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(f"{error}\n(see `bnjax {argv[1] if len(argv) > 1 else ''} --help`)")
    except (AttributeError, KeyError) as error:  # config_flags: a --config.FIELD that isn't one
        from bnjax.config import base_config, flat_fields

        known = dict(flat_fields(base_config()))
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        unknown = [o for o in overrides if o[len("--config."):] not in known] or overrides
        text = str(error)
        hint = text[text.index("Did you mean"):].rstrip("'\"") if "Did you mean" in text else ""
        _fail(f"unknown config field {' '.join(unknown)}. {hint}")


# bnjax's own source files; a path test on the folder name alone would also keep the libraries
# of a virtualenv inside a checkout named bnjax
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OnlyOwnInfo(pylogging.Filter):
    """Keep INFO lines from bnjax; libraries (orbax, jax) log one per file operation."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return (record.levelno >= pylogging.WARNING
                or os.path.abspath(record.pathname).startswith(_PACKAGE))


def _drop_closed_loop_reports() -> None:
    """A restore that fails on a damaged checkpoint leaves tensorstore callbacks aimed at the
    asyncio loop Orbax has closed; each reports 'Event loop is closed' through sys.excepthook
    (dozens of tracebacks, about nothing: bnjax has already fallen back or said what is
    wrong), or through threading.excepthook from a thread. Every other report is printed as
    usual."""
    report, thread_report = sys.excepthook, threading.excepthook

    def closed_loop(value) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

    def excepthook(kind, value, traceback):
        if not closed_loop(value):
            report(kind, value, traceback)

    def thread_excepthook(arguments):
        if not closed_loop(arguments.exc_value):
            thread_report(arguments)

    sys.excepthook, threading.excepthook = excepthook, thread_excepthook


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_OnlyOwnInfo())
    pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.ERROR)  # "no TPU found"


def main(argv) -> None:
    name = argv[1]
    _refuse_foreign(name, _foreign_flags(name))
    logging.set_verbosity(logging.INFO)
    if not (flags.FLAGS.is_parsed() and _LIBRARY_LOGS.value):
        quiet_library_logs()
        _drop_closed_loop_reports()
    try:
        COMMANDS[name].run()
    except BnjaxError as error:
        _fail(str(error), error.exit_status)


def run(argv=None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] in ("--version", "version"):
        from bnjax.runinfo import code_identity

        code = code_identity()
        dirty = " (uncommitted changes)" if code["git_dirty"] else ""
        commit = (f"commit {code['git_commit'][:12]}{dirty}" if code["git_commit"]
                  else "not in a git checkout")
        print(f"bnjax {code['bnjax_version']}, {commit}, source sha256 "
              f"{code['source_sha256'][:16]}")
        sys.exit(0)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--helpfull", "help"):
        print(overview())
        sys.exit(0 if len(argv) >= 2 else EXIT_USAGE)
    if argv[1] not in COMMANDS:
        _fail(f"unknown command '{argv[1]}'\n{overview()}")
    if any(arg in ("-h", "--help", "--helpfull", "--helpshort") for arg in argv[2:]):
        print(command_help(argv[1]))
        sys.exit(0)
    if "config" not in COMMANDS[argv[1]].flags:  # absl would not know these flags at all
        _refuse_foreign(argv[1], sorted({arg.split("=")[0] for arg in argv
                                         if arg.startswith("--config")}))
    xla_flags.apply_defaults()  # before JAX starts a backend: XLA reads XLA_FLAGS once
    app.run(main, argv=argv, flags_parser=parse_flags)
