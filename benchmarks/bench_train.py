"""Training step speed, side by side in one run: a plain reference step against the trainer's step.

Both run on the same batches (same examples, same teacher paraphrases), the same device and the same dtype policy
(the frozen model in bfloat16 on CUDA, float32 on CPU), alternating step by step so load on a shared machine hits
both alike. The first step of each is a warm-up and is not counted.

- reference: what one writes first. Per-example embedding, one right-padded batch, the model's full-vocabulary
  logits at every position (`model(inputs_embeds=...).logits`), then KL(teacher || student) at temperature T over
  the response positions, times T^2; teacher forward under no_grad, student forward and backward.
- trainer: `steer_eval.training.distillation.distillation_step`, as trainers/train.py calls it, for each `--group_sizes`;
  and for each `--graph_group_sizes` with its decoder passes replayed as CUDA graphs (`steer_eval.training.decoder_graphs`,
  the trainer's default on a GPU). Graphs are captured once per padded shape: a pass over all the batches captures
  every shape before the timed steps; its time, the number of shapes and the memory the graphs keep are reported
  apart (`cuda_graph_capture`).

Mean and median seconds per step are both reported: an eager step that meets a sequence length for the first time
also pays for attention plans (cuDNN's), which a long training pays once per length; the median leaves that out.
`--profile` adds, per method, the operations that took the most device time in one more step.

Tokens are the student's real tokens (prompt + steering slot + response), the trainer's own count.

    python benchmarks/bench_train.py --data data/language/german_train.json --batch_size 8 --label cpu_b8
    python benchmarks/bench_train.py --data .../german_train.json --batch_size 32 --graph_group_sizes 0 16 \
        --steps 30 --profile --label h200_b32
"""
import argparse
import ctypes
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from steer_eval.errors import UserError
from steer_eval.steering.assembly import embed
from steer_eval.steering.embedding_space import InputEmbeddings
from steer_eval.steering.models import load_model
from steer_eval.training.decoder_graphs import LENGTH_STEP, DecoderGraphs
from steer_eval.training.distillation import distillation_step
from steer_eval.training.examples import example_rng, make_examples, semantic_init, teacher_prompt
from steer_eval.training.inputs import read_training_data

REPO = Path(__file__).resolve().parents[1]


def reference_step(model, teachers, students, responses, vectors, temperature):
    embeddings = InputEmbeddings.of(model)
    weight = embeddings.weight

    def logits_at_responses(prompts, vecs):
        rows = [torch.cat([embed(p, embeddings, vecs), embeddings.rows(torch.tensor(r, device=weight.device))])
                for p, r in zip(prompts, responses)]
        embeds = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.long, device=weight.device)
                                                for r in rows], batch_first=True)
        logits = model(inputs_embeds=embeds, attention_mask=mask).logits
        return torch.cat([logits[i, len(p.input_ids) - 1:len(p.input_ids) - 1 + len(r)]
                          for i, (p, r) in enumerate(zip(prompts, responses))]).float()

    with torch.no_grad():
        teacher = logits_at_responses(teachers, {})
    student = logits_at_responses(students, vectors)
    kl = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                  log_target=True, reduction="none").sum(-1)
    loss = kl.mean() * temperature ** 2
    loss.backward()
    return loss.detach()


class PeakMemory:
    """Peak memory of one step above what was in use before it: CUDA's allocator counter, or on CPU the process's
    resident set sampled every millisecond."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # glibc keeps freed blocks; handing them back first makes the resident set start at the live tensors.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self.base = self.peak = _rss()
            self.running = True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.sampler.join()
            self.bytes = self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def profile(method, batch, device, top=12) -> list[dict]:
    """The operations with the most self device time (CPU time on a CPU) in one step of `method`."""
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with torch.profiler.profile(activities=activities) as prof:
        method(*batch).item()
    key = "self_device_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:top]
    return [{"op": e.key[:80], "calls": e.count, "ms": round(getattr(e, key) / 1000, 2)} for e in events]


def machine(device) -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()  # the CPU may be shared: record how busy it was
    return info


def batches(records, args, tokenizer):
    examples = make_examples(records, tokenizer, "behaviour", args.max_response_tokens)
    rng = random.Random(args.seed)
    chosen = []
    for step in range(args.steps + 1):
        indices = rng.sample(range(len(examples)), args.batch_size)
        batch = [examples[i] for i in indices]
        teachers = [teacher_prompt(e, tokenizer, example_rng(args.seed, step, i))
                    for e, i in zip(batch, indices)]
        chosen.append((teachers, [e.student for e in batch], [e.response_ids for e in batch],
                       sum(len(e.student.input_ids) + len(e.response_ids) for e in batch)))
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", nargs="+", required=True, help="single-behaviour files from build_data.py")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--group_sizes", type=int, nargs="+", default=[0], help="trainer variants (0: one group)")
    parser.add_argument("--graph_group_sizes", type=int, nargs="*", default=[],
                        help="trainer variants with CUDA graphs (0: one group)")
    parser.add_argument("--length_step", type=int, default=LENGTH_STEP, help="CUDA graphs: padded lengths' step")
    parser.add_argument("--graph_layouts", nargs="+", choices=("packed", "padded"), default=["packed"],
                        help="CUDA graphs: sequences packed into shared rows (the trainer's), or one padded row each")
    parser.add_argument("--profile", action="store_true", help="add each method's top device-time operations")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per method (after one warm-up)")
    parser.add_argument("--max_response_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=10.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label", required=True, help="names the output file train_speed_<label>.json")
    parser.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = parser.parse_args(argv)
    if args.graph_group_sizes and not args.device.startswith("cuda"):
        parser.error("--graph_group_sizes needs a CUDA --device")
    try:
        records, _ = read_training_data(args.data)
    except UserError as error:
        parser.exit(2, f"bench_train.py: error: {error}\n")
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    model, tokenizer = load_model(args.model, device=args.device, dtype=dtype)
    behaviour = records[0]["behaviors"][0]
    vector = torch.nn.Parameter(semantic_init(behaviour, tokenizer, InputEmbeddings.of(model)))
    methods = {"reference": lambda t, s, r: reference_step(model, t, s, r, {behaviour: vector}, args.temperature)}
    for size in args.group_sizes:
        methods[f"trainer_group{size}"] = (lambda t, s, r, size=size: distillation_step(
            model, t, s, r, {behaviour: vector}, args.temperature, group_size=size))
    chosen = batches(records, args, tokenizer)
    capture = {}
    for layout in args.graph_layouts if args.graph_group_sizes else ():
        graphs = DecoderGraphs(model, length_step=args.length_step, share_rows=layout == "packed")
        torch.cuda.synchronize()
        reserved, started = torch.cuda.memory_reserved(), time.perf_counter()
        for size in args.graph_group_sizes:
            name = f"trainer_cuda_graphs{'_padded' if layout == 'padded' else ''}_group{size}"
            methods[name] = (lambda t, s, r, size=size, graphs=graphs: distillation_step(
                model, t, s, r, {behaviour: vector}, args.temperature, group_size=size, graphs=graphs))
            for teachers, students, responses, _ in chosen:
                distillation_step(model, teachers, students, responses, {behaviour: vector}, args.temperature,
                                  group_size=size, graphs=graphs, backward=False)
        torch.cuda.synchronize()
        capture[layout] = {"shapes": len(graphs.graphed), "capture_seconds": round(graphs.capture_seconds, 2),
                           "pass_seconds": round(time.perf_counter() - started, 2), "length_step": graphs.length_step,
                           "memory_kept_mib": round((torch.cuda.memory_reserved() - reserved) / 2 ** 20, 1)}
        print(f"captured {layout}: {capture[layout]}", flush=True)
    results = {name: {"seconds": [], "tokens": 0, "peak_bytes": 0, "losses": [], "grads": []} for name in methods}
    for step, (teachers, students, responses, tokens) in enumerate(chosen):
        order = list(methods) if step % 2 == 0 else list(methods)[::-1]
        for name in order:
            vector.grad = None
            with PeakMemory(args.device) as memory:
                started = time.perf_counter()
                loss = methods[name](teachers, students, responses).item()  # .item() waits for the device
                seconds = time.perf_counter() - started
            if step == 0:
                continue  # warm-up
            entry = results[name]
            entry["seconds"].append(seconds)
            entry["tokens"] += tokens
            entry["peak_bytes"] = max(entry["peak_bytes"], memory.bytes)
            entry["losses"].append(loss)
            entry["grads"].append(vector.grad.detach().float().cpu().clone())
        print(f"step {step}: " + ", ".join(f"{n} {results[n]['seconds'][-1]:.3f}s" for n in methods if step), flush=True)

    reference = results["reference"]
    summary = {}
    for name, entry in results.items():
        seconds = sum(entry["seconds"])
        summary[name] = {"s_per_step": seconds / len(entry["seconds"]), "tokens_per_s": entry["tokens"] / seconds,
                         "median_s_per_step": statistics.median(entry["seconds"]),
                         "peak_memory_mib": round(entry["peak_bytes"] / 2 ** 20, 1),
                         "max_relative_loss_difference_to_reference": max(
                             abs(a - b) / abs(b) for a, b in zip(entry["losses"], reference["losses"])),
                         "max_relative_gradient_difference_to_reference": max(
                             ((a - b).norm() / b.norm()).item() for a, b in zip(entry["grads"], reference["grads"]))}
    for name in summary:
        summary[name]["speed_vs_reference"] = summary[name]["tokens_per_s"] / summary["reference"]["tokens_per_s"]
        summary[name]["median_speed_vs_reference"] = (summary["reference"]["median_s_per_step"]
                                                      / summary[name]["median_s_per_step"])
        if args.profile:
            summary[name]["profile"] = profile(methods[name], chosen[-1][:3], args.device)
    result = {"label": args.label, "batch_size": args.batch_size, "dtype": dtype, "device": args.device,
              "steps_measured": args.steps, "cuda_graph_capture": capture, "data": [Path(d).name for d in args.data],
              "methods": summary,
              "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(args.device)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_speed_{args.label}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
