"""Glue between the task YAML files and steer_eval.lmeval.tasks (documents, per-sample scores, aggregations).

`--metadata '{"prompt_only": true}'` gives stock models the plain prompt as `text_input` (no instructions)."""
import datasets

from steer_eval.lmeval.tasks import (best_order_accuracy, documents, mean_where_applicable,  # noqa: F401
                                     order_variance, order_variance_max, prompt_only_documents, score,
                                     scorer_version, single_setting, token_identity)


def load_docs(steer_task: str, prompt_only: bool = False, **_metadata) -> dict:
    # lm-eval passes the task metadata and the model arguments along with dataset_kwargs; only steer_task and
    # prompt_only (--metadata) matter.
    return {"test": datasets.Dataset.from_list(prompt_only_documents(documents(steer_task), prompt_only))}


def process_single(doc, results):
    return score(doc, results[0])


def process_by_category(doc, results):
    return score(doc, results[0], per_category=True)


def process_compose(doc, results):
    return score(doc, results[0], per_category=True, orders=True)
