"""PrOSV baseline trainer: a prompt-only steering vector per behaviour, trained like the steering tokens.

Same data, teacher and loss as `train.py --stage behaviour` (KL(teacher || student) at temperature T over the
teacher's response, teacher = the frozen model reading a sampled instruction paraphrase). Only the student
differs: it reads the *plain* prompt, and `factor * direction / |direction|` is added to the output of one decoder
layer at the last `positions` prompt positions ("Towards Steering without Sacrifice": prompt-only steering vectors,
direction and factor trained jointly, the factor with a moderately large initial value and learning rate). So a
comparison with the tokens isolates where the control lives: input embeddings at the steering slots vs. the
residual stream at the end of the prompt.

    python trainers/train_prosv.py --data data/*/german_train.json --layer 10 --out_dir runs/prosv

The out_dir is a run as train.py's (`steer_eval.training.run_folder`): `run.json` names its settings, data and model before
the first step; a finished run or another run in the out_dir is refused, `--restart` moves it into
`replaced-<date>/` first. There are no checkpoints: an interrupted run starts again from the beginning.
"""
import argparse
import json
import math
import sys
import time

import torch
from tqdm.auto import tqdm

from steer_eval.errors import UserError
from steer_eval.log import show_on_stderr
from steer_eval.runs.records import append_rows
from steer_eval.scoring.behaviors import get_behavior
from steer_eval.steering.activation import Intervention, added_to_layers, check_layer, decoder_layers, vector_name
from steer_eval.steering.assembly import assemble
from steer_eval.steering.models import load_model, model_label, weights_fingerprint
from steer_eval.steering.tokens import ModelIdentity, SteeringToken, TokenStore, default_tokens_dir
from steer_eval.training.distillation import distillation_step, training_dtype, training_group_size
from steer_eval.training.examples import epoch_order, example_rng, make_examples, student_deltas, teacher_prompt
from steer_eval.training.inputs import read_training_data
from steer_eval.training.run_folder import RunFolder, TrainingIdentity, check_tokens_free
from steer_eval.training.trainer_setup import fail

TRAINER = "train_prosv.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", nargs="+", required=True, help="single-behaviour files from build_data.py")
    parser.add_argument("--behaviors", nargs="*", default=[], help="train only these (default: all in the data)")
    parser.add_argument("--tokens_dir", default=None, help="store to write prosv/<behaviour> into")
    parser.add_argument("--out_dir", default="runs/prosv")
    parser.add_argument("--layer", type=int, default=None, help="decoder layer (default: the middle one)")
    parser.add_argument("--positions", type=int, default=4, help="last N prompt positions steered")
    parser.add_argument("--factor_init", type=float, default=8.0)
    parser.add_argument("--factor_lr", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate of the direction")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=10.0)
    parser.add_argument("--warmup_frac", type=float, default=0.1)
    parser.add_argument("--grad_clip", type=float, default=1.0)
    parser.add_argument("--max_response_tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--group_size", type=int, default=-1,
                        help="examples per length-sorted micro-batch (0: all; -1: by device, as train.py)")
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--restart", action="store_true", help="move the out_dir's previous run aside, start over")
    parser.add_argument("--overwrite_tokens", action="store_true",
                        help="replace prosv vectors of another training in --tokens_dir (refused otherwise)")
    args = parser.parse_args(argv)
    if args.positions < 1:
        parser.error("--positions must be at least 1 (a prompt-only vector steers some prompt positions)")
    if args.group_size < -1:
        parser.error("--group_size is examples per micro-batch: 0 for the whole batch, -1 to choose by device")
    return args


def main(argv=None):
    show_on_stderr()
    args = parse_args(argv)
    try:
        return train(args)
    except UserError as error:  # bad data, behaviour, token, model or out_dir
        fail(str(error))


def train(args) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    dtype = training_dtype("auto", device)
    group_size = training_group_size(args.group_size, device)
    torch.manual_seed(args.seed)
    # Every input is checked before the model loads: data, behaviours, model files, the out_dir's run.
    records, data_files = read_training_data(args.data, "behaviour")
    for name in args.behaviors:
        get_behavior(name)
    if args.behaviors:
        records = [r for r in records if r["behaviors"][0] in args.behaviors]
    if not records:
        fail("no training records for the behaviours asked for; check --data and --behaviors")
    folder = RunFolder(args.out_dir, TRAINER)
    inputs = TrainingIdentity.of(TRAINER, vars(args), data_files, weights_fingerprint(args.model))
    folder.check(inputs, resume=False, restart=args.restart)  # run.json is written once the model has loaded
    store = TokenStore(args.tokens_dir or default_tokens_dir(model_label(args.model)))
    check_tokens_free(store, [vector_name("prosv", b) for b in sorted({r["behaviors"][0] for r in records})],
                      args.out_dir, args.overwrite_tokens)

    print(f"loading {args.model} on {device}", file=sys.stderr, flush=True)
    model, tokenizer = load_model(args.model, device=device, dtype=dtype)
    layer = len(decoder_layers(model)) // 2 if args.layer is None else args.layer
    check_layer(model, layer)
    embedding_weight = model.get_input_embeddings().weight
    identity = ModelIdentity.of(model_label(args.model), embedding_weight)

    examples = make_examples(records, tokenizer, "behaviour", args.max_response_tokens)
    students = [assemble(e.prompt, e.behaviors, tokenizer, control_method="prosv") for e in examples]
    names = sorted({e.behaviors[0] for e in examples})
    generator = torch.Generator().manual_seed(args.seed)
    directions = {b: torch.nn.Parameter(torch.randn(model.config.hidden_size, generator=generator).to(device))
                  for b in names}
    factors = {b: torch.nn.Parameter(torch.tensor(args.factor_init, device=device)) for b in names}
    optimizer = torch.optim.AdamW([{"params": list(directions.values()), "lr": args.lr, "weight_decay": 0.0},
                                   {"params": list(factors.values()), "lr": args.factor_lr, "weight_decay": 0.0}])
    steps_per_epoch = math.ceil(len(examples) / args.batch_size)
    total = steps_per_epoch * args.epochs
    warmup = max(1, math.ceil(args.warmup_frac * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup
                                                  else max(0.0, (total - s) / max(1, total - warmup)))
    folder.open(inputs, resume=False, restart=args.restart, command=" ".join(sys.argv))
    if folder.replaced:
        print(f"--restart: moved the previous run's files into {folder.replaced}", flush=True)
    folder.open_log(0)  # lines of an interrupted start of this run are written again
    print(f"prosv: {len(examples)} examples, vectors {names}, layer {layer}, last {args.positions} prompt "
          f"positions, {total} steps, device {device}, {dtype}", flush=True)

    started, step = time.time(), 0
    for step in tqdm(range(total), desc="train prosv"):
        epoch, in_epoch = divmod(step, steps_per_epoch)
        order = epoch_order(len(examples), args.seed, epoch)
        indices = order[in_epoch * args.batch_size:(in_epoch + 1) * args.batch_size]
        batch = [examples[i] for i in indices]
        teachers = [teacher_prompt(e, tokenizer, example_rng(args.seed, epoch, i))
                    for e, i in zip(batch, indices)]
        student_prompts = [students[i] for i in indices]

        def steered(rows):  # the vectors of these rows of the batch, added at the end of each one's prompt
            deltas = student_deltas(directions, factors, [batch[r].behaviors[0] for r in rows])
            ends = torch.tensor([len(student_prompts[r].input_ids) for r in rows], device=device)
            return added_to_layers(model, [(Intervention("prosv", layer, args.positions, 1.0), deltas)], ends)

        optimizer.zero_grad()
        loss = distillation_step(model, teachers, student_prompts, [e.response_ids for e in batch], {},
                                 args.temperature, group_size=group_size, student_context=steered)
        torch.nn.utils.clip_grad_norm_([*directions.values(), *factors.values()], args.grad_clip)
        optimizer.step()
        scheduler.step()
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            append_rows(folder.log, [{"step": step + 1, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                                      "factors": {b: round(f.item(), 4) for b, f in factors.items()}}])

    summary = {"steps": total, "examples": len(examples), "device": device, "dtype": dtype,
               "seconds": round(time.time() - started, 1), "final_loss": loss.item()}
    config = {**vars(args), "layer": layer, "summary": summary}
    for b in names:
        direction = (directions[b] / directions[b].norm()).detach().float().cpu()
        store.save(SteeringToken(vector_name("prosv", b), direction, (b,), identity, config,
                                 Intervention("prosv", layer, args.positions, float(factors[b].item()))))
    folder.summary.write_text(json.dumps(config, indent=2))
    folder.finish(tokens_dir=str(store.directory), tokens=[vector_name("prosv", b) for b in names], steps=total)
    print(f"saved prosv/{{{','.join(names)}}} to {store.directory}: {json.dumps(summary)}", flush=True)
    return {"directions": directions, "factors": factors, "layer": layer, "store": store, "summary": summary}


if __name__ == "__main__":
    main()
