"""trainers/train.py's settings and everything it checks before its model loads.

`resumed_config` reads the command line (with `--resume`, the out_dir's run's own settings and checkpoint);
`prepare_run` reads and checks the data, behaviours, frozen tokens and the out_dir's run, and takes the out_dir's
lock, writing nothing. Both raise a `UserError` (or exit 2 through argparse) in one line; `fail` is how an entry
point reports one: one error line and exit status 2.
"""
import argparse
import dataclasses
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Optional

from steer_eval.backends.generation import chat_template_options
from steer_eval.errors import SettingError, quoted
from steer_eval.scoring.behaviors import AND_TOKEN, get_behavior
from steer_eval.steering.models import model_label, weights_fingerprint
from steer_eval.steering.tokens import TokenStore, default_tokens_dir
from steer_eval.training.checkpoints import check_checkpoint_state
from steer_eval.training.examples import AND_INITS
from steer_eval.training.inputs import TrainingInputError, read_training_data, restore_config
from steer_eval.training.run_folder import (VOLATILE, RunFolder, TrainingIdentity, check_tokens_free,
                                            token_fingerprints)

logger = logging.getLogger(__name__)

TRAINER = "train.py"


@dataclass
class TrainConfig:
    model: str = "smollm2-135m"
    stage: str = "behaviour"  # behaviour | and
    data: list = field(default_factory=list)  # JSON/JSONL files of {prompt, response, behaviors, ...}
    behaviors: list = field(default_factory=list)  # stage behaviour: train only these (default: all in data)
    tokens_dir: Optional[str] = None  # token store to write to (and, for stage `and`, read frozen tokens from)
    out_dir: str = "runs/train"  # run.json, ckpt.pt, log.jsonl, summary.json
    subset: float = 1.0  # fraction of the records used (after a seeded shuffle)
    epochs: int = 2
    batch_size: int = 8  # global batch: split across ranks
    lr: float = 1e-4
    weight_decay: float = 1e-3
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    temperature: float = 10.0
    lambda_orth: float = 0.5
    and_init: str = "zero"  # stage and: where <and> starts: zero | random (HELP says how and why)
    max_response_tokens: int = 256
    chat_template_kwargs: str = ""  # JSON object for the chat template of teacher and student, e.g. Qwen3's
    # '{"enable_thinking": false}' (the same as the evaluation's --chat-template-kwargs)
    dtype: str = "auto"  # of the frozen model: auto (bfloat16 on CUDA, float32 elsewhere) | bfloat16 | float32
    group_size: int = -1  # examples per length-sorted micro-batch of a step; 0: the whole batch; -1: by device
    cuda_graphs: str = "auto"  # the decoder's passes replayed as CUDA graphs: auto (on a CUDA device) | on | off
    gradient_checkpointing: bool = False
    run_validation: bool = False
    val_data_path: list = field(default_factory=list)  # JSON files like --data, for --run_validation
    eval_every: int = 0  # steps between validations (0: only at the end)
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    overwrite_tokens: bool = False  # replace tokens of another training in --tokens_dir (refused otherwise)
    stop_after: int = 0  # stop (with a checkpoint) after this many steps of the schedule; 0 = run to the end
    restart: bool = False  # move the out_dir's run aside (into replaced-<date>/) and start over


HELP = {
    "and_init": "stage and: where <and> starts. zero (the default and the paper's: no bias towards any behaviour) or "
                "random (the paper's ablation): a Gaussian direction drawn from --seed, scaled to the mean norm of the "
                "frozen behaviour tokens it composes, so it starts on the scale of the vectors it sits between "
                "rather than of the vocabulary's embedding rows, which the steering slots need not match",
}


def fail(message: str):
    """For entry points: bad input as one logged error line naming the problem and the fix (on stderr once the
    script shows the package's log, `steer_eval.log.show_on_stderr`), and exit status 2, as argparse's own errors."""
    logger.error(" ".join(message.splitlines()))
    raise SystemExit(2)


def parse_config(argv=None, description: str | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        names = [f"--{f.name}"] + (["--json_paths"] if f.name == "data" else [])
        text = {"help": HELP[f.name]} if f.name in HELP else {}
        if f.type is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, **text)
        elif f.type is list:
            parser.add_argument(*names, nargs="+", default=default, **text)
        else:
            kind = {Optional[str]: str}.get(f.type, f.type)
            parser.add_argument(*names, type=kind, default=default, **text)
    config = TrainConfig(**vars(parser.parse_args(argv)))
    if config.resume and config.restart:
        fail("--resume continues the out_dir's run and --restart starts it over; choose one")
    check_config(config, fail)
    return config


def check_config(config: TrainConfig, error):
    if config.stage not in ("behaviour", "and"):
        error(f"--stage must be 'behaviour' or 'and', not {quoted(config.stage)}")
    if not config.resume and not config.data:
        error("--data is required: JSON files from trainers/build_data.py")
    if config.run_validation and not config.val_data_path:
        error("--run_validation needs --val_data_path")
    if not 0 < config.subset <= 1:
        error("--subset is a fraction in (0, 1]")
    if config.and_init not in AND_INITS:
        error(f"--and_init must be {' or '.join(AND_INITS)}, not {quoted(config.and_init)}")
    if config.dtype not in ("auto", "bfloat16", "float32"):
        error(f"--dtype must be auto, bfloat16 or float32, not {quoted(config.dtype)}")
    try:
        chat_template_options(config.chat_template_kwargs)
    except SettingError as problem:
        error(f"--chat_template_kwargs: {problem}")
    if config.group_size < -1:
        error("--group_size is examples per micro-batch: 0 for the whole batch, -1 to choose by device")
    if config.cuda_graphs not in ("auto", "on", "off"):
        error(f"--cuda_graphs must be auto, on or off, not {quoted(config.cuda_graphs)}")
    if config.cuda_graphs == "on" and config.gradient_checkpointing:
        error("--cuda_graphs on and --gradient_checkpointing do not go together; choose one")
    if min(config.epochs, config.batch_size, config.checkpoint_every, config.log_every) < 1 or config.eval_every < 0:
        error("--epochs, --batch_size, --checkpoint_every and --log_every are at least 1, --eval_every at least 0")


def resumed_config(argv=None, description: str | None = None) -> tuple[TrainConfig, Optional[dict]]:
    """The command line's config; with --resume, the out_dir's run's own (from run.json) and its checkpoint, or None
    when the run was killed before its first one. A bad run.json or checkpoint raises a UserError."""
    config = parse_config(argv, description)
    if not config.resume:
        return config, None
    folder = RunFolder(config.out_dir, TRAINER)
    manifest = folder.manifest_for_resume()
    # Exact continuation: everything comes from the run except where to stop and what to run on (the device, and
    # CUDA graphs, which a CPU cannot run).
    saved = restore_config(TrainConfig, manifest["config"], folder.manifest)
    for name in VOLATILE:
        setattr(saved, name, getattr(config, name))

    def refuse(message):
        raise TrainingInputError(f"{folder.manifest}: {message}; restore it, or --restart")
    check_config(saved, refuse)
    # weights_only: tensors and plain containers only; a crafted pickle cannot run code on --resume.
    return saved, folder.read_checkpoint(manifest)


@dataclass
class TrainingPlan:
    """A run's checked inputs: what it trains on, where it writes, and how long it runs."""
    records: list[dict]
    val_records: list[dict]
    store: TokenStore
    folder: RunFolder
    inputs: TrainingIdentity
    trained: list[str]  # the names of the vectors it trains
    steps_per_epoch: int
    total_steps: int


def prepare_run(config: TrainConfig, checkpoint: Optional[dict] = None, master: bool = True) -> TrainingPlan:
    """Every input checked before the model loads: data, behaviours, frozen tokens, model files, the out_dir's run
    (on the `master` rank, which then holds the out_dir for this process). Writes nothing."""
    records, data_files = read_training_data(config.data, config.stage)
    for name in config.behaviors:
        get_behavior(name)
    if config.stage == "behaviour" and config.behaviors:
        records = [r for r in records if r["behaviors"][0] in config.behaviors]
    if not records:
        raise TrainingInputError(f"--data holds no records of --behaviors {' '.join(config.behaviors)}")
    shuffled = random.Random(config.seed).sample(records, len(records))
    records = shuffled[:max(1, round(len(shuffled) * config.subset))]
    val_records, val_files = (read_training_data(config.val_data_path, config.stage) if config.run_validation
                              else ([], []))
    if config.stage == "behaviour":
        val_records = [r for r in val_records if r["behaviors"][0] in {r["behaviors"][0] for r in records}]
    store = TokenStore(config.tokens_dir or default_tokens_dir(model_label(config.model)))
    # Stage and: the frozen tokens are read now, and checked against the model once it is loaded.
    tokens = token_fingerprints(store, {b for r in records for b in r["behaviors"]}) if config.stage == "and" else {}
    steps_per_epoch = math.ceil(len(records) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    folder = RunFolder(config.out_dir, TRAINER)
    inputs = TrainingIdentity.of(TRAINER, dataclasses.asdict(config), data_files, weights_fingerprint(config.model),
                                 val_files, tokens)
    trained = sorted({r["behaviors"][0] for r in records}) if config.stage == "behaviour" else [AND_TOKEN]
    if master:  # an out_dir holding another run is refused here; run.json is written before the first step
        folder.check(inputs, config.resume, config.restart, checkpoint)
        check_tokens_free(store, trained, config.out_dir, config.overwrite_tokens)
    if checkpoint is not None:
        check_checkpoint_state(checkpoint, folder.checkpoint, trained, total_steps)
    return TrainingPlan(records, val_records, store, folder, inputs, trained, steps_per_epoch, total_steps)
