"""Self-distillation trainer for steering tokens (method: README, "Training steering tokens"). Reads top to bottom:

  config -> data -> model + vectors -> optimiser/schedule -> (resume) -> loop -> checkpoints -> token store.

Stage `behaviour`: one vector per behaviour, initialised at the mean embedding of its instruction's tokens, trained
so the frozen model reading `prompt <b>` matches the same model reading `prompt + instruction` (a paraphrase sampled
per example) on the teacher's response: KL(teacher || student) at temperature T, times T^2, over response tokens.
Stage `and`: behaviour vectors frozen (loaded from the token store), `<and>` zero-initialised and trained on pairs
`prompt <b1><and><b2>`, plus lambda_orth * sum_b cos(e_and, e_b)^2. The model pass and the loss are
`steer_eval.training.distillation.distillation_step` (packed on the host, length-grouped, logits in chunks, on a GPU the
decoder as CUDA graphs).

    python trainers/train.py --stage behaviour --data data/language/german_train.json --lr 3e-3
    torchrun --standalone --nproc-per-node=2 trainers/train.py ...   # data parallel (gloo on CPU, nccl on GPU)
    python trainers/train.py --out_dir runs/german --resume          # continue exactly where it stopped

The out_dir is one run (rules: `steer_eval.training.run_folder`). Before the first step `run.json` records a run id, the
settings (but resume, restart, stop_after, device, cuda_graphs), the SHA-256 of the data files and the model's weights
fingerprint; checkpoints carry the run id. Another run, or a finished one, in the out_dir is refused in one line;
`--restart` moves its files into `replaced-<date>/`; `--resume` continues the folder's own run (from step 0 if it was
killed before its first checkpoint). The log is append-only. Inputs are checked before the model loads (exit 2).
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python trainers/train.py` from a checkout
from steer_eval.steering.assembly import assemble  # noqa: E402
from steer_eval.scoring.behaviors import AND_TOKEN, get_behavior  # noqa: E402
from steer_eval.training.decoder_graphs import DecoderGraphs  # noqa: E402
from steer_eval.training.distillation import (distillation_step, training_dtype, training_graphs,  # noqa: E402
                                     training_group_size)
from steer_eval.steering.embedding_space import InputEmbeddings  # noqa: E402
from steer_eval.errors import SettingError, UserError  # noqa: E402
from steer_eval.backends.generation import chat_template_options  # noqa: E402
from steer_eval.steering.models import load_model, model_label, weights_fingerprint  # noqa: E402
from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenStore, default_tokens_dir  # noqa: E402
from steer_eval.training.run_folder import (VOLATILE, RunFolder, TrainingIdentity, TrainingInputError,  # noqa: E402
                                     check_checkpoint_state, read_training_data, restore_checkpoint, restore_config,
                                     save_checkpoint, short, token_fingerprints)
from steer_eval.training import run_folder as training_run  # noqa: E402

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


# ----------------------------------------------------------------------------- configuration

def parse_config(argv=None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        names = [f"--{f.name}"] + (["--json_paths"] if f.name == "data" else [])
        if f.type is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=default)
        elif f.type is list:
            parser.add_argument(*names, nargs="+", default=default)
        else:
            kind = {Optional[str]: str}.get(f.type, f.type)
            parser.add_argument(*names, type=kind, default=default)
    config = TrainConfig(**vars(parser.parse_args(argv)))
    if config.resume and config.restart:
        parser.error("--resume continues the out_dir's run and --restart starts it over; choose one")
    check_config(config, parser.error)
    return config


def check_config(config: TrainConfig, error):
    if config.stage not in ("behaviour", "and"):
        error(f"--stage must be 'behaviour' or 'and', not {short(config.stage)}")
    if not config.resume and not config.data:
        error("--data is required: JSON files from trainers/build_data.py")
    if config.run_validation and not config.val_data_path:
        error("--run_validation needs --val_data_path")
    if not 0 < config.subset <= 1:
        error("--subset is a fraction in (0, 1]")
    if config.dtype not in ("auto", "bfloat16", "float32"):
        error(f"--dtype must be auto, bfloat16 or float32, not {short(config.dtype)}")
    try:
        chat_template_options(config.chat_template_kwargs)
    except SettingError as problem:
        error(f"--chat_template_kwargs: {problem}")
    if config.group_size < -1:
        error("--group_size is examples per micro-batch: 0 for the whole batch, -1 to choose by device")
    if config.cuda_graphs not in ("auto", "on", "off"):
        error(f"--cuda_graphs must be auto, on or off, not {short(config.cuda_graphs)}")
    if config.cuda_graphs == "on" and config.gradient_checkpointing:
        error("--cuda_graphs on and --gradient_checkpointing do not go together; choose one")
    if min(config.epochs, config.batch_size, config.checkpoint_every, config.log_every) < 1 or config.eval_every < 0:
        error("--epochs, --batch_size, --checkpoint_every and --log_every are at least 1, --eval_every at least 0")


def fail(message: str):
    """Bad input: one line on stderr naming the problem and the fix, and exit status 2, as argparse's own errors."""
    print(f"{Path(sys.argv[0]).name or 'train.py'}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- data

def load_records(paths, stage=None) -> list[dict]:
    """Records of JSON/JSONL files, each field checked (`steer_eval.training.run_folder`); a bad file exits 2 in one line."""
    try:
        return training_run.load_records(paths, stage)
    except UserError as error:
        fail(str(error))


@dataclass(frozen=True)
class Example:
    prompt: str
    behaviors: tuple
    student: object  # AssembledPrompt with steering slots
    response_ids: tuple


def make_examples(records, tokenizer, stage, max_response_tokens, chat_template_kwargs=None) -> list[Example]:
    examples = []
    for number, row in enumerate(records, 1):
        training_run.check_record(row, f"record {number}", stage)  # one behaviour each, or seen pairs for `and`
        behaviors = tuple(row["behaviors"])
        student = assemble(row["prompt"], behaviors, tokenizer, control_method="steering", mode="composition",
                           chat_template_kwargs=chat_template_kwargs)
        # The end-of-turn token is part of the target: length behaviours are largely about when to stop.
        response = tokenizer.encode(row["response"], add_special_tokens=False)[:max_response_tokens - 1]
        examples.append(Example(row["prompt"], behaviors, student, tuple(response) + (tokenizer.eos_token_id,)))
    return examples


def teacher_prompt(example: Example, tokenizer, rng: random.Random, chat_template_kwargs=None):
    """The same prompt with a natural-language instruction: one paraphrase per behaviour, sampled."""
    instructions = [rng.choice(get_behavior(b).instructions) for b in example.behaviors]
    return assemble(example.prompt, example.behaviors, tokenizer, control_method="text", instructions=instructions,
                    chat_template_kwargs=chat_template_kwargs)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    # A function of (seed, epoch, example) only, so a resumed run samples the same paraphrases.
    return random.Random(f"{seed}:{epoch}:{index}")


# ----------------------------------------------------------------------------- vectors and penalty

def orthogonality_penalty(and_vector, behaviour_vectors):
    """sum_b cos(e_and, e_b)^2: keeps <and> from copying any one behaviour (zero at the zero vector)."""
    if not behaviour_vectors:
        return and_vector.new_zeros(())
    others = torch.stack(list(behaviour_vectors))
    return (F.cosine_similarity(and_vector.unsqueeze(0), others, dim=-1) ** 2).sum()


def semantic_init(behavior_id, tokenizer, embeddings: InputEmbeddings):
    """Mean of the input embeddings (as the model's embedding module makes them: the steering space) of the
    behaviour's first (canonical) instruction's tokens."""
    ids = tokenizer.encode(get_behavior(behavior_id).instructions[0], add_special_tokens=False)
    return embeddings.rows(torch.tensor(ids, device=embeddings.device)).float().mean(0)


def initial_vectors(stage, examples, tokenizer, embeddings: InputEmbeddings, store, identity):
    """(trainable fp32 parameters, frozen vectors). Stage behaviour: one semantically initialised vector per
    behaviour in the data. Stage and: <and> at zero; the behaviour tokens it composes, loaded and frozen."""
    if stage == "behaviour":
        names = sorted({e.behaviors[0] for e in examples})
        return {b: torch.nn.Parameter(semantic_init(b, tokenizer, embeddings)) for b in names}, {}
    zero = torch.zeros(embeddings.hidden_size, device=embeddings.device)
    seen = sorted({b for e in examples for b in e.behaviors})
    return ({AND_TOKEN: torch.nn.Parameter(zero)},
            {b: store.load(b, identity).vector.to(embeddings.device) for b in seen})


# ----------------------------------------------------------------------------- checkpoints

# Checkpoints (`<out_dir>/ckpt.pt`: run id, config, step, vectors, optimiser, schedule, RNG states, log position)
# are written and read by steer_eval.training.run_folder: save_checkpoint, RunFolder.read_checkpoint, restore_checkpoint.

def resumed_config(argv=None) -> tuple[TrainConfig, Optional[dict]]:
    """The command line's config; with --resume, the out_dir's run's own (from run.json) and its checkpoint, or None
    when the run was killed before its first one. A bad run.json or checkpoint raises a UserError."""
    config = parse_config(argv)
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


# ----------------------------------------------------------------------------- training

def main(argv=None):
    try:
        return train(*resumed_config(argv))
    except UserError as error:  # bad data, behaviour, token, model, out_dir, manifest or checkpoint
        fail(str(error))


def train(config: TrainConfig, checkpoint: Optional[dict] = None) -> dict:
    """Run (or continue) one training; returns the model and vectors so callers can inspect them."""
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    master = rank == 0
    if config.device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    else:
        device = config.device
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dtype = training_dtype(config.dtype, device)
    group_size = training_group_size(config.group_size, device)
    try:
        use_graphs = training_graphs(config.cuda_graphs, device) and not config.gradient_checkpointing
    except ValueError as error:
        fail(str(error))
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    # Every input is checked before the model loads: data, behaviours, frozen tokens, model files, the out_dir's run.
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
        training_run.check_tokens_free(store, trained, config.out_dir, config.overwrite_tokens)
    if checkpoint is not None:
        check_checkpoint_state(checkpoint, folder.checkpoint, trained, total_steps)

    # In bfloat16 every op of the frozen base runs in bfloat16; the trained vectors stay float32 parameters.
    model, tokenizer = load_model(config.model, device=device, dtype=dtype)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # HF only checkpoints in train mode; the model has no dropout, so outputs are unchanged
    graphs = DecoderGraphs(model) if use_graphs else None
    embeddings = InputEmbeddings.of(model)  # UnsupportedModelError for a family whose space cannot be reproduced
    identity = ModelIdentity.of(model_label(config.model), embeddings.weight)
    template = chat_template_options(config.chat_template_kwargs)
    examples = make_examples(records, tokenizer, config.stage, config.max_response_tokens, template)
    val_examples = make_examples(val_records, tokenizer, config.stage, config.max_response_tokens, template)

    params, frozen = initial_vectors(config.stage, examples, tokenizer, embeddings, store, identity)
    names = list(params)
    vectors = {**frozen, **params}

    # Every vector holds a gradient from the start (zeros when its behaviour is not in a batch): AdamW skips a
    # parameter whose gradient is None, and None would otherwise come back after --resume only, so a resumed run
    # would update differently from the uninterrupted one.
    for p in params.values():
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, math.ceil(config.warmup_frac * total_steps))
    def lr_factor(s):  # linear warm-up, then linear decay to 0 at the last step
        return (s + 1) / warmup if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    def batch_loss(batch, epoch, indices, backward=True):
        """(kl, orth, student tokens); with `backward`, their gradients accumulate into the parameters."""
        teachers = [teacher_prompt(e, tokenizer, example_rng(config.seed, epoch, i), template)
                    for e, i in zip(batch, indices)]
        kl = distillation_step(model, teachers, [e.student for e in batch], [e.response_ids for e in batch],
                               vectors, config.temperature, group_size=group_size, backward=backward,
                               graphs=graphs)
        orth = (orthogonality_penalty(params[AND_TOKEN], frozen.values()) if config.stage == "and"
                else kl.new_zeros(()))
        if backward and orth.requires_grad:
            (config.lambda_orth * orth).backward()
        return kl, orth.detach(), sum(len(e.student.input_ids) + len(e.response_ids) for e in batch)

    def validate():
        losses = []
        with torch.no_grad():
            for i in range(0, len(val_examples), config.batch_size):
                batch = val_examples[i:i + config.batch_size]
                losses.append(batch_loss(batch, -1, range(i, i + len(batch)), backward=False)[0].item())
        return sum(losses) / len(losses)

    def log(entry):  # whole lines, appended
        with open(folder.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    step, run = 0, None
    if checkpoint is not None:  # vectors, optimiser, schedule and RNG states as they were at its step
        step = restore_checkpoint(checkpoint, folder.checkpoint, params, optimizer, scheduler)
    if master:  # run.json (--restart: the old run moved aside first); the log as the checkpoint saw it, never padded
        run = folder.open(inputs, config.resume, config.restart, checkpoint, " ".join(sys.argv))
        if folder.replaced:
            print(f"--restart: moved the previous run's files into {folder.replaced}", flush=True)
        folder.open_log(checkpoint["log_position"] if checkpoint is not None else 0)
        if val_examples and step == 0:
            log({"step": 0, "val_loss": validate()})
        print(f"stage {config.stage}: {len(examples)} examples, tokens {names}, {total_steps} steps "
              f"({config.epochs} epochs x {steps_per_epoch}), world {world}, device {device}, {dtype}, groups of "
              f"{group_size or config.batch_size}" + (", CUDA graphs" if graphs else "")
              + (f", resuming at step {step}" if step else ", from step 0 (no checkpoint yet)" if config.resume
                 else ""), flush=True)

    last_step = total_steps if not config.stop_after else min(total_steps, config.stop_after)
    started, window_tokens, window_time, window_steps, last_loss = time.time(), 0, 0.0, 0, None
    progress = tqdm(total=total_steps, initial=step, desc=f"train {config.stage}", disable=not master)
    while step < last_step:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(examples), config.seed, epoch)
        global_indices = order[in_epoch * config.batch_size:(in_epoch + 1) * config.batch_size]
        indices = global_indices[rank::world] or global_indices[:1]  # a rank never sits a step out
        tick = time.time()
        optimizer.zero_grad(set_to_none=False)
        kl, orth, tokens = batch_loss([examples[i] for i in indices], epoch, indices)
        loss = kl + config.lambda_orth * orth
        if distributed:
            # Data parallel by hand: the trainable state is a few vectors, so averaging their gradients is all
            # DistributedDataParallel would do here. Every rank then takes the same optimiser step.
            for p in params.values():
                dist.all_reduce(p.grad)
                p.grad /= world
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        last_loss = loss.item()  # also waits for the GPU, so the timing below is honest
        window_time += time.time() - tick
        window_tokens += tokens * world
        window_steps += 1
        progress.update(1)
        if master and (step % config.log_every == 0 or step == last_step):
            progress.set_postfix(loss=f"{last_loss:.3f}")
            log({"step": step, "epoch": epoch, "loss": last_loss, "kl": kl.item(), "orth": orth.item(),
                 "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                 "s_per_step": window_time / window_steps, "tokens_per_s": window_tokens / window_time,
                 "norms": {n: round(p.detach().norm().item(), 4) for n, p in params.items()}})
            window_tokens, window_time, window_steps = 0, 0.0, 0
        if master and val_examples and config.eval_every and step % config.eval_every == 0:
            log({"step": step, "val_loss": validate()})
        if master and (step % config.checkpoint_every == 0 or step == last_step):
            save_checkpoint(folder.checkpoint, run, dataclasses.asdict(config), step, params, optimizer, scheduler,
                            folder.log.stat().st_size)
    progress.close()

    summary = {"steps": step, "examples": len(examples), "world_size": world, "device": device, "dtype": dtype,
               "cuda_graphs": {"shapes": len(graphs.graphed), "capture_seconds": round(graphs.capture_seconds, 1)}
               if graphs else None,
               "seconds_this_run": round(time.time() - started, 1), "final_loss": last_loss}
    if distributed:  # the ranks must agree exactly, or the saved token would depend on which rank wrote it
        for name, p in params.items():
            gathered = [torch.empty_like(p) for _ in range(world)]
            dist.all_gather(gathered, p.detach())
            if not all(torch.equal(g, gathered[0]) for g in gathered):
                raise RuntimeError(f"ranks hold different values of {name!r} after training")
        summary["ranks_identical"] = True
    if master and step == total_steps:
        if val_examples:
            summary["val_loss"] = validate()
            log({"step": step, "val_loss": summary["val_loss"]})
        training = {**dataclasses.asdict(config), "run": run, "summary": summary}
        for name, p in params.items():
            behaviors = (name,) if name != AND_TOKEN else tuple(frozen)
            store.save(SteeringToken(name, p.detach().float().cpu(), behaviors, identity, training))
        folder.summary.write_text(json.dumps(training, indent=2))
        folder.finish(tokens_dir=str(store.directory), tokens=names, steps=step)
        print(f"saved {', '.join(names)} to {store.directory}: {json.dumps(summary)}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"model": model, "params": params, "frozen": frozen, "summary": summary, "store": store}


if __name__ == "__main__":
    main()
