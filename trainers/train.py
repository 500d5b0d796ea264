"""Self-distillation trainer for steering tokens (method: docs/training.md). Reads top to bottom:

  config -> data -> model + vectors -> optimiser/schedule -> (resume) -> loop -> checkpoints -> token store.

Stage `behaviour`: one vector per behaviour, initialised at the mean embedding of its instruction's tokens, trained
so the frozen model reading `prompt <b>` matches the same model reading `prompt + instruction` (a paraphrase sampled
per example) on the teacher's response: KL(teacher || student) at temperature T, times T^2, over response tokens.
Stage `and`: behaviour vectors frozen (loaded from the token store), `<and>` zero-initialised (`--and_init random`
for the ablation) and trained on pairs `prompt <b1><and><b2>`, plus lambda_orth * sum_b cos(e_and, e_b)^2. The
model pass and the loss are `steer_eval.training.distillation.distillation_step` (packed on the host, length-grouped,
logits in chunks, on a GPU the decoder as CUDA graphs).

    python trainers/train.py --stage behaviour --data data/language/german_train.json --lr 3e-3
    torchrun --standalone --nproc-per-node=2 trainers/train.py ...   # data parallel (gloo on CPU, nccl on GPU)
    python trainers/train.py --out_dir runs/german --resume          # continue exactly where it stopped

The out_dir is one run (rules: `steer_eval.training.run_folder`). Before the first step `run.json` records a run id, the
settings (but resume, restart, stop_after, device, cuda_graphs), the SHA-256 of the data files and the model's weights
fingerprint; checkpoints carry the run id. Another run, or a finished one, in the out_dir is refused in one line;
`--restart` moves its files into `replaced-<date>/`; `--resume` continues the folder's own run (from step 0 if it was
killed before its first checkpoint). The log is append-only. Inputs are checked before the model loads (exit 2).
Settings: `steer_eval.training.trainer_setup.TrainConfig`; examples, teacher prompts and initial vectors:
`steer_eval.training.examples`.
"""
import dataclasses
import json
import math
import os
import random
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from steer_eval.backends.generation import chat_template_options
from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.runs.records import append_rows
from steer_eval.scoring.behaviors import AND_TOKEN
from steer_eval.steering.embedding_space import InputEmbeddings
from steer_eval.steering.models import load_model, model_label
from steer_eval.steering.tokens import ModelIdentity, SteeringToken
from steer_eval.training.checkpoints import restore_checkpoint, save_checkpoint
from steer_eval.training.decoder_graphs import DecoderGraphs
from steer_eval.training.distillation import distillation_step, training_dtype, training_graphs, training_group_size
from steer_eval.training.examples import (epoch_order, example_rng, initial_vectors, make_examples,
                                          orthogonality_penalty, teacher_prompt)
from steer_eval.training.trainer_setup import TrainConfig, fail, prepare_run, resumed_config


def main(argv=None):
    show_on_stderr()
    try:
        return train(*resumed_config(argv, __doc__))
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
    plan = prepare_run(config, checkpoint, master)
    folder, store, steps_per_epoch, total_steps = plan.folder, plan.store, plan.steps_per_epoch, plan.total_steps

    # In bfloat16 every op of the frozen base runs in bfloat16; the trained vectors stay float32 parameters.
    print(f"loading {config.model} on {device}", file=sys.stderr, flush=True)
    model, tokenizer = load_model(config.model, device=device, dtype=dtype)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # HF only checkpoints in train mode; the model has no dropout, so outputs are unchanged
    graphs = DecoderGraphs(model) if use_graphs else None
    embeddings = InputEmbeddings.of(model)  # UnsupportedModelError for a family whose space cannot be reproduced
    identity = ModelIdentity.of(model_label(config.model), embeddings.weight)
    template = chat_template_options(config.chat_template_kwargs)
    examples = make_examples(plan.records, tokenizer, config.stage, config.max_response_tokens, template)
    val_examples = make_examples(plan.val_records, tokenizer, config.stage, config.max_response_tokens, template)

    params, frozen = initial_vectors(config.stage, examples, tokenizer, embeddings, store, identity,
                                     config.and_init, config.seed)
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

    def log(entry):  # whole lines, appended and flushed to disk (the records' crash rule)
        append_rows(folder.log, [entry])

    step, run = 0, None
    if checkpoint is not None:  # vectors, optimiser, schedule and RNG states as they were at its step
        step = restore_checkpoint(checkpoint, folder.checkpoint, params, optimizer, scheduler)
    if master:  # run.json (--restart: the old run moved aside first); the log as the checkpoint saw it, never padded
        run = folder.open(plan.inputs, config.resume, config.restart, checkpoint, " ".join(sys.argv))
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
