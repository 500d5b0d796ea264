"""Documents and metrics behind the lm-eval tasks in `steer_eval/tasks/` (the YAML files call these through its utils.py).

A document is one held-out test prompt with an ordered list of behaviours, the instruction paraphrases a
text-instruction model reads, and where it sits in its combination (combination id, order index, seen/unseen).
Stock lm-eval models read `text_input` (the prompt followed by the joined instructions, exactly the user turn
that `assemble(..., control_method="text")` renders); the steering model classes read the structured fields.
With `--metadata '{"prompt_only": true}'` `text_input` is the plain prompt (for stock models that steer by
themselves, e.g. lm-eval's `steered` with an exported CAA vector) and each document says `prompt_only: True`.

Sizes are a fixed, seeded subsample so a full run stays feasible (see COMPOSE_PLAN). Documents of one
combination are adjacent, and for each prompt all orders follow each other, so `--limit N` yields complete
order sets wherever N allows.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from statistics import mean
from typing import Iterable, Mapping, Sequence

from steer_eval.report.analysis import combination_key, summarize
from steer_eval.steering.assembly import choose_paraphrase, join_instructions
from steer_eval.scoring.behaviors import (
    BEHAVIORS,
    CATEGORIES,
    Behavior,
    BehaviorError,
    compatible_combinations,
    get_behavior,
    is_seen_combination,
)
from steer_eval.errors import SettingError
from steer_eval.scoring.prompts import Prompt, bundled_prompts
from steer_eval.scoring.quality import measure
from steer_eval.scoring.verdict import scorer_spec, verify

PARAPHRASE_SEED = 0
SPLITS = ("seen", "unseen")
CATEGORY_METRICS = tuple(f"acc_{category}" for category in CATEGORIES)
STOCK_SETTING = {"control_method": "text", "mode": "stock model (instructions as text)"}
PROMPT_ONLY_SETTING = {"control_method": "none", "mode": "stock model (prompt only)"}


@dataclass(frozen=True)
class ComposePlan:
    combinations_per_split: int | None  # per seen/unseen split, seeded sample; None = every compatible one
    prompts_per_combination: int  # the same prompts for every order, so orders compare like with like


# Generations in a full run: k=1 288, k=2 1904, k=3 1152, k=4 1152 (prompts x combinations x k! orders).
COMPOSE_PLAN = {1: ComposePlan(None, 16), 2: ComposePlan(None, 8), 3: ComposePlan(16, 6), 4: ComposePlan(8, 3)}


class SteeredResponse(str):
    """A generation that remembers how it was produced (control method, mode, steering tokens, instruction)."""
    setting: dict

    def __new__(cls, text: str, setting: Mapping):
        response = super().__new__(cls, text)
        response.setting = dict(setting)
        return response

    def __reduce__(self):  # lm-eval's --use_cache pickles responses
        return (SteeredResponse, (str(self), self.setting))


def text_input(prompt: str, instructions: Sequence[str]) -> str:
    """What a stock model reads: the prompt, a blank line, the instructions joined as assemble() joins them."""
    return f"{prompt}\n\n{join_instructions(instructions)}" if instructions else prompt


def _document(task: str, prompt: Prompt, order: Sequence[Behavior], order_index: int, seen: bool) -> dict:
    ids = [b.id for b in order]
    instructions = [choose_paraphrase(b, prompt.prompt, PARAPHRASE_SEED) for b in order]
    combination = combination_key(ids)
    return {"doc_id": f"{task}/{combination}/{prompt.id}/{'>'.join(ids)}", "prompt_id": prompt.id,
            "prompt": prompt.prompt, "behaviors": ids, "k": len(ids), "combination": combination,
            "order_index": order_index, "n_orders": math.factorial(len(ids)), "seen": seen,
            "instructions": instructions, "text_input": text_input(prompt.prompt, instructions)}


def _combination_documents(task: str, combination: tuple[Behavior, ...], prompts: list[Prompt]) -> list[dict]:
    seen = is_seen_combination(combination)
    orders = list(itertools.permutations(combination))
    return [_document(task, prompt, order, index, seen) for prompt in prompts for index, order in enumerate(orders)]


def compose_documents(k: int, split: str) -> list[dict]:
    """Documents of task compose_<k>_<split>: every order of each chosen combination, adjacent."""
    if k not in COMPOSE_PLAN or split not in SPLITS:
        raise BehaviorError(f"no task compose_{k}_{split}: k is one of {sorted(COMPOSE_PLAN)}, split one of {SPLITS}")
    plan = COMPOSE_PLAN[k]
    combinations = [c for c in compatible_combinations(k) if is_seen_combination(c) == (split == "seen")]
    if plan.combinations_per_split is not None and plan.combinations_per_split < len(combinations):
        chosen = set(random.Random(f"compose_{k}_{split}").sample(range(len(combinations)),
                                                                    plan.combinations_per_split))
        combinations = [c for i, c in enumerate(combinations) if i in chosen]  # keep registry order
    test_prompts = bundled_prompts("test")
    task = f"compose_{k}_{split}"
    documents = []
    for combination in combinations:
        key = combination_key([b.id for b in combination])
        prompts = random.Random(key).sample(test_prompts, plan.prompts_per_combination)
        documents.extend(_combination_documents(task, combination, prompts))
    return documents


def behavior_documents(behavior_id: str) -> list[dict]:
    """Documents of task steer_<id>: every held-out test prompt with that one behaviour."""
    behavior = get_behavior(behavior_id)
    return _combination_documents(f"steer_{behavior_id}", (behavior,), bundled_prompts("test"))


def documents(task: str) -> list[dict]:
    """The documents of a task by its name: steer_<behaviour> or compose_<k>_<seen|unseen>."""
    if task.startswith("steer_") and task.removeprefix("steer_") in BEHAVIORS:
        return behavior_documents(task.removeprefix("steer_"))
    parts = task.split("_")
    if len(parts) == 3 and parts[0] == "compose" and parts[1].isdigit():
        return compose_documents(int(parts[1]), parts[2])
    raise BehaviorError(f"unknown steer-eval task {task!r}; tasks are steer_<behaviour> and "
                        f"compose_<k>_seen|unseen for k in {sorted(COMPOSE_PLAN)}")


def prompt_only_documents(docs: Iterable[Mapping], prompt_only: bool) -> list[dict]:
    """With prompt_only (--metadata '{"prompt_only": true}'): text_input = the plain prompt, marked prompt_only."""
    if not isinstance(prompt_only, bool):
        raise SettingError(f"prompt_only must be true or false, got {prompt_only!r}; pass it as a JSON boolean: "
                           "--metadata '{\"prompt_only\": true}'")
    if not prompt_only:
        return list(docs)
    return [{**doc, "text_input": doc["prompt"], "prompt_only": True} for doc in docs]


# --- per-sample scores (process_results) -------------------------------------------------------------------

def score(doc: Mapping, response: str, *, per_category: bool = False, orders: bool = False) -> dict:
    """One sample's metric values: the verdicts, how the response was produced, and its place in its order set.

    Within one composition every behaviour has its own category, so the per-category values are the
    per-behaviour verdicts of this sample (None where the composition has no behaviour of that category).
    """
    verdict = verify(doc["behaviors"], response)
    setting = getattr(response, "setting", PROMPT_ONLY_SETTING if doc.get("prompt_only") else STOCK_SETTING)
    quality = measure(response)
    values = {"accuracy": float(verdict.followed),
              "repetition": quality["repetition"], "distinct_2": quality["distinct_2"],
              "control_method": setting["control_method"], "mode": setting["mode"],
              "scorer": scorer_spec(doc["behaviors"]), "steering_tokens": setting.get("steering_tokens", {})}
    if per_category:
        by_category = {get_behavior(b).category: ok for b, ok in verdict.per_behavior.items()}
        values.update({f"acc_{c}": float(by_category[c]) if c in by_category else None for c in CATEGORIES})
    if orders:
        outcome = {"behaviors": list(doc["behaviors"]), "prompt_id": doc["prompt_id"], "followed": verdict.followed}
        values.update({"best_order_accuracy": outcome, "order_variance": outcome, "order_variance_max": outcome})
    return values


# --- aggregations (metric_list `aggregation: !function ...`) ------------------------------------------------

def mean_where_applicable(values: Iterable[float | None]) -> float:
    """Mean over the samples a per-category metric applies to; NaN when none of them has that category."""
    present = [v for v in values if v is not None]
    return mean(present) if present else math.nan


def order_variance(outcomes: Iterable[Mapping]) -> float:
    """Δmax averaged over combinations, on complete order sets (steer_eval.report.analysis); NaN where none is complete."""
    value = summarize(list(outcomes))["all"].get("order_variance")
    return math.nan if value is None else value


def order_variance_max(outcomes: Iterable[Mapping]) -> float:
    """The largest Δmax of any one combination."""
    value = summarize(list(outcomes))["all"].get("order_variance_max")
    return math.nan if value is None else value


def best_order_accuracy(outcomes: Iterable[Mapping]) -> float:
    """Accuracy of each combination's best order, averaged over combinations (complete order sets only)."""
    value = summarize(list(outcomes))["all"].get("best_order_accuracy")
    return math.nan if value is None else value


def scorer_version(specs: Iterable[Mapping]) -> str:
    """The scorer every sample was judged by (each sample's own spec is in --log_samples)."""
    return single_setting(f"{spec['scorer']} v{spec['version']}" for spec in specs)


def token_identity(token_sets: Iterable[Mapping[str, str]]) -> str:
    """Which steering vectors produced the run: their count and one digest of all name=fingerprint pairs."""
    fingerprints: dict[str, set[str]] = {}
    for tokens in token_sets:
        for name, fingerprint in tokens.items():
            fingerprints.setdefault(name, set()).add(fingerprint)
    if not fingerprints:
        return "none"
    changed = sorted(name for name, values in fingerprints.items() if len(values) > 1)
    if changed:
        return "mixed: two vectors for " + ", ".join(changed)
    pairs = ",".join(f"{name}={values.pop()}" for name, values in sorted(fingerprints.items()))
    return f"{len(fingerprints)} tokens, digest {hashlib.sha256(pairs.encode()).hexdigest()[:12]}"


def single_setting(values: Iterable[str]) -> str:
    """A run has one control method and one mode; say 'mixed: ...' if samples disagree."""
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else "mixed: " + ", ".join(distinct)
