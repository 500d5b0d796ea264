"""Self-distillation trainer for steering tokens (method: README, "Training steering tokens"). Reads top to bottom:

  config -> data -> model + vectors -> optimiser/schedule -> (resume) -> loop -> checkpoints -> token store.

Stage `behaviour`: one vector per behaviour, initialised at the mean embedding of its instruction's tokens, trained
so the frozen model reading `prompt <b>` matches the same model reading `prompt + instruction` (a paraphrase sampled
per example) on the teacher's response: KL(teacher || student) at temperature T, times T^2, over response tokens.
Stage `and`: behaviour vectors frozen (loaded from the token store), `<and>` zero-initialised and trained on pairs
`prompt <b1><and><b2>`, plus lambda_orth * sum_b cos(e_and, e_b)^2. The model pass and the loss are
`steer_eval.distillation.distillation_step` (packed on the host, length-grouped, logits in chunks, on a GPU the
decoder as CUDA graphs).

    python trainers/train.py --stage behaviour --data data/language/german_train.json --lr 3e-3
    torchrun --standalone --nproc-per-node=2 trainers/train.py ...   # data parallel (gloo on CPU, nccl on GPU)
    python trainers/train.py --out_dir runs/german --resume          # continue exactly where it stopped
"""
import argparse
import dataclasses
import json
import math
import os
import pickle
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
from steer_eval.assembly import assemble  # noqa: E402
from steer_eval.behaviors import AND_TOKEN, BehaviorError, get_behavior  # noqa: E402
from steer_eval.decoder_graphs import DecoderGraphs  # noqa: E402
from steer_eval.distillation import (distillation_step, training_dtype, training_graphs,  # noqa: E402
                                     training_group_size)
from steer_eval.models import load_model, model_label  # noqa: E402
from steer_eval.tokens import ModelIdentity, SteeringToken, TokenError, TokenStore, default_tokens_dir  # noqa: E402


@dataclass
class TrainConfig:
    model: str = "smollm2-135m"
    stage: str = "behaviour"  # behaviour | and
    data: list = field(default_factory=list)  # JSON/JSONL files of {prompt, response, behaviors, ...}
    behaviors: list = field(default_factory=list)  # stage behaviour: train only these (default: all in data)
    tokens_dir: Optional[str] = None  # token store to write to (and, for stage `and`, read frozen tokens from)
    out_dir: str = "runs/train"  # checkpoint, log.jsonl
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
    stop_after: int = 0  # stop (with a checkpoint) after this many steps of the schedule; 0 = run to the end


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
    if config.stage not in ("behaviour", "and"):
        parser.error(f"--stage must be 'behaviour' or 'and', not {config.stage!r}")
    if not config.resume and not config.data:
        parser.error("--data is required: JSON files from trainers/build_data.py")
    if config.run_validation and not config.val_data_path:
        parser.error("--run_validation needs --val_data_path")
    if not 0 < config.subset <= 1:
        parser.error("--subset is a fraction in (0, 1]")
    if config.dtype not in ("auto", "bfloat16", "float32"):
        parser.error(f"--dtype must be auto, bfloat16 or float32, not {config.dtype!r}")
    if config.group_size < -1:
        parser.error("--group_size is examples per micro-batch: 0 for the whole batch, -1 to choose by device")
    if config.cuda_graphs not in ("auto", "on", "off"):
        parser.error(f"--cuda_graphs must be auto, on or off, not {config.cuda_graphs!r}")
    if config.cuda_graphs == "on" and config.gradient_checkpointing:
        parser.error("--cuda_graphs on and --gradient_checkpointing do not go together; choose one")
    return config


def fail(message: str):
    """Bad input: one line on stderr naming the problem and the fix, and exit status 2, as argparse's own errors."""
    print(f"{Path(sys.argv[0]).name or 'train.py'}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# ----------------------------------------------------------------------------- data

def load_records(paths) -> list[dict]:
    records = []
    for path in paths:
        if not Path(path).is_file():
            fail(f"{path} does not exist; make the data with trainers/build_data.py")
        text = Path(path).read_text(encoding="utf-8")
        try:
            rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if str(path).endswith(".jsonl")
                    else json.loads(text))
        except json.JSONDecodeError as error:
            fail(f"{path} is not valid JSON ({error}); make the data with trainers/build_data.py")
        for row in rows if isinstance(rows, list) else [rows]:
            if not isinstance(row, dict) or not {"prompt", "response", "behaviors"} <= row.keys():
                fail(f"{path}: every record needs prompt, response and behaviors "
                     "(make the file with trainers/build_data.py)")
            records.append(row)
    return records


@dataclass(frozen=True)
class Example:
    prompt: str
    behaviors: tuple
    student: object  # AssembledPrompt with steering slots
    response_ids: tuple


def make_examples(records, tokenizer, stage, max_response_tokens) -> list[Example]:
    examples = []
    for row in records:
        behaviors = tuple(row["behaviors"])
        if (stage == "and") != (len(behaviors) > 1):
            fail(f"stage {stage} got a record with behaviours {list(behaviors)}; "
                 "stage behaviour takes single-behaviour files, stage and takes pair files")
        if stage == "and" and any(get_behavior(b).unseen for b in behaviors):
            fail(f"<and> is trained on seen behaviours only, but a record holds {list(behaviors)}; "
                 "held-out (unseen) behaviours measure zero-shot composition")
        student = assemble(row["prompt"], behaviors, tokenizer, control_method="steering", mode="composition")
        # The end-of-turn token is part of the target: length behaviours are largely about when to stop.
        response = tokenizer.encode(row["response"], add_special_tokens=False)[:max_response_tokens - 1]
        examples.append(Example(row["prompt"], behaviors, student, tuple(response) + (tokenizer.eos_token_id,)))
    return examples


def teacher_prompt(example: Example, tokenizer, rng: random.Random):
    """The same prompt with a natural-language instruction: one paraphrase per behaviour, sampled."""
    instructions = [rng.choice(get_behavior(b).instructions) for b in example.behaviors]
    return assemble(example.prompt, example.behaviors, tokenizer, control_method="text", instructions=instructions)


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


def semantic_init(behavior_id, tokenizer, embedding_weight):
    """Mean of the frozen embeddings of the behaviour's first (canonical) instruction's tokens."""
    ids = tokenizer.encode(get_behavior(behavior_id).instructions[0], add_special_tokens=False)
    return embedding_weight[torch.tensor(ids, device=embedding_weight.device)].float().mean(0)


def initial_vectors(stage, examples, tokenizer, embedding_weight, store, identity):
    """(trainable fp32 parameters, frozen vectors). Stage behaviour: one semantically initialised vector per
    behaviour in the data. Stage and: <and> at zero; the behaviour tokens it composes, loaded and frozen."""
    if stage == "behaviour":
        names = sorted({e.behaviors[0] for e in examples})
        return {b: torch.nn.Parameter(semantic_init(b, tokenizer, embedding_weight)) for b in names}, {}
    zero = torch.zeros(embedding_weight.shape[1], device=embedding_weight.device)
    seen = sorted({b for e in examples for b in e.behaviors})
    return ({AND_TOKEN: torch.nn.Parameter(zero)},
            {b: store.load(b, identity).vector.to(embedding_weight.device) for b in seen})


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, config, step, params, optimizer, scheduler, log_position):
    state = {"config": dataclasses.asdict(config), "step": step,
             "vectors": {name: p.detach().cpu() for name, p in params.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "log_position": log_position,
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # an interrupt never leaves a half-written checkpoint


def resumed_config(argv=None) -> tuple[TrainConfig, Optional[dict]]:
    config = parse_config(argv)
    checkpoint_path = Path(config.out_dir) / "ckpt.pt"
    if not config.resume:
        return config, None
    if not checkpoint_path.is_file():
        fail(f"--resume but {checkpoint_path} does not exist; start without --resume")
    try:
        # weights_only: tensors and plain containers only; a crafted pickle cannot run code on --resume.
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        fail(f"{checkpoint_path} is not a checkpoint this trainer wrote ({str(error).splitlines()[0]}); "
             "move it away and start without --resume")
    unknown = sorted(set(checkpoint["config"]) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        fail(f"{checkpoint_path} was written by another version of this trainer (settings "
             f"{', '.join(unknown)}); start without --resume")
    # Exact continuation: everything comes from the checkpoint except where to stop and what to run on (the device,
    # and CUDA graphs, which a CPU cannot run).
    saved = TrainConfig(**checkpoint["config"])
    saved.resume, saved.stop_after, saved.device = True, config.stop_after, config.device
    saved.cuda_graphs = config.cuda_graphs
    return saved, checkpoint


# ----------------------------------------------------------------------------- training

def main(argv=None):
    try:
        return train(*resumed_config(argv))
    except (BehaviorError, TokenError) as error:
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

    # In bfloat16 every op of the frozen base runs in bfloat16; the trained vectors stay float32 parameters.
    model, tokenizer = load_model(config.model, device=device, dtype=dtype)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # HF only checkpoints in train mode; the model has no dropout, so outputs are unchanged
    graphs = DecoderGraphs(model) if use_graphs else None
    embedding_weight = model.get_input_embeddings().weight
    identity = ModelIdentity.of(model_label(config.model), embedding_weight)
    store = TokenStore(config.tokens_dir or default_tokens_dir(model_label(config.model)))

    records = load_records(config.data)
    if config.stage == "behaviour" and config.behaviors:
        records = [r for r in records if r["behaviors"][0] in config.behaviors]
    shuffled = random.Random(config.seed).sample(records, len(records))
    records = shuffled[:max(1, round(len(shuffled) * config.subset))]
    examples = make_examples(records, tokenizer, config.stage, config.max_response_tokens)
    val_records = load_records(config.val_data_path) if config.run_validation else []
    if config.stage == "behaviour":
        val_records = [r for r in val_records if r["behaviors"][0] in {r["behaviors"][0] for r in records}]
    val_examples = make_examples(val_records, tokenizer, config.stage, config.max_response_tokens)

    params, frozen = initial_vectors(config.stage, examples, tokenizer, embedding_weight, store, identity)
    names = list(params)
    vectors = {**frozen, **params}

    # Every vector holds a gradient from the start (zeros when its behaviour is not in a batch): AdamW skips a
    # parameter whose gradient is None, and None would otherwise come back after --resume only, so a resumed run
    # would update differently from the uninterrupted one.
    for p in params.values():
        p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, math.ceil(config.warmup_frac * total_steps))
    def lr_factor(s):  # linear warm-up, then linear decay to 0 at the last step
        return (s + 1) / warmup if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    def batch_loss(batch, epoch, indices, backward=True):
        """(kl, orth, student tokens); with `backward`, their gradients accumulate into the parameters."""
        teachers = [teacher_prompt(e, tokenizer, example_rng(config.seed, epoch, i)) for e, i in zip(batch, indices)]
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

    def log(entry):
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    out_dir = Path(config.out_dir)
    log_path = out_dir / "log.jsonl"
    step = 0
    if checkpoint is not None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(checkpoint["vectors"][name])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        random.setstate(checkpoint["python_rng"])
        if checkpoint["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        step = checkpoint["step"]
        if master:  # drop log lines written after the checkpoint: they will be written again
            with open(log_path, "r+", encoding="utf-8") as handle:
                handle.truncate(checkpoint["log_position"])
    elif master:
        out_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        if val_examples:
            log({"step": 0, "val_loss": validate()})
    if master:
        print(f"stage {config.stage}: {len(examples)} examples, tokens {names}, {total_steps} steps "
              f"({config.epochs} epochs x {steps_per_epoch}), world {world}, device {device}, {dtype}, groups of "
              f"{group_size or config.batch_size}" + (", CUDA graphs" if graphs else "")
              + (f", resuming at step {step}" if step else ""), flush=True)

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
            save_checkpoint(out_dir / "ckpt.pt", config, step, params, optimizer, scheduler, log_path.stat().st_size)
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
        training = {**dataclasses.asdict(config), "summary": summary}
        for name, p in params.items():
            behaviors = (name,) if name != AND_TOKEN else tuple(frozen)
            store.save(SteeringToken(name, p.detach().float().cpu(), behaviors, identity, training))
        (out_dir / "summary.json").write_text(json.dumps(training, indent=2))
        print(f"saved {', '.join(names)} to {store.directory}: {json.dumps(summary)}", flush=True)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"model": model, "params": params, "frozen": frozen, "summary": summary, "store": store}


if __name__ == "__main__":
    main()
