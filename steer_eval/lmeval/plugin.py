"""What steer-eval adds to a running lm-eval: its two models, its task folder, and one-line user errors.

The released lm-eval (0.4.13) reads no plugins, so `registration` calls these functions when lm-eval's own
modules load (through the `.pth` import hook). Newer lm-eval reads the entry points in pyproject.toml
(`lm_eval.models`; `lm_eval.tasks` as proposed upstream) and gets the same classes and the same folder.
"""
from __future__ import annotations

import difflib
import functools
import inspect
import sys
from importlib import metadata
from pathlib import Path

from steer_eval.compat import check_supported
from steer_eval.errors import UserError

# The package's task folder, by path: it is data for lm-eval (YAML, and the utils.py its files name), read, not
# imported, from here.
TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
MODEL_CLASSES = {
    "steering_hf": "steer_eval.lmeval.models:SteeringHFLM",
    "steering_vllm": "steer_eval.lmeval.models:SteeringVLLMLM",
}
OUR_TASKS = ("compose_1 … compose_4 (each also as _seen/_unseen), steer_<behaviour> for each of the 18 behaviours "
             "(tag steer_behaviors; `steer-eval behaviors` lists them)")


class TaskNameError(UserError, ValueError):
    """A task name that is not one of ours but looks like it was meant to be."""


def register_models(model_registry) -> None:
    """Add our models to lm-eval's model registry (placeholders, imported when asked for; idempotent)."""
    # lm-eval's get_model() imports its own model table only while the registry is empty; registering
    # ours first would hide `hf`, `vllm`, ... so load that table before adding to it.
    import lm_eval.models  # noqa: F401

    check_supported("lm-eval", metadata.version("lm-eval"))
    for alias, target in MODEL_CLASSES.items():
        if alias not in model_registry:
            model_registry.register(alias, target=target)


def with_our_tasks(include_path):
    """lm-eval's include_path with our folder first, so the order is lm-eval's tasks, ours, the user's.

    A later folder wins on equal names (lm-eval logs the override), so a user's edited copy of our tasks,
    passed with --include_path, replaces ours.
    """
    paths = [] if include_path is None else list(include_path) if isinstance(include_path, (list, tuple)) else [include_path]
    if any(Path(path).resolve() == TASKS_DIR for path in paths):  # given already, e.g. the repository's tasks/ link
        return include_path
    return [str(TASKS_DIR), *paths]


def our_task_names(task_index: dict) -> list[str]:
    """Task, group and tag names defined by our YAML files (or a user's copies of them, by file name)."""
    our_files = {path.name for path in TASKS_DIR.glob("*.yaml")}
    names = set()
    for name, entry in task_index.items():
        if entry.yaml_path is not None and Path(entry.yaml_path).name in our_files:
            names.add(name)
            names.update(entry.tags)
    return sorted(names)


def check_unmatched(task_list: list[str], task_index: dict) -> None:
    """Raise for a name lm-eval found nothing for that is a misspelling of ours (others keep lm-eval's error)."""
    ours = our_task_names(task_index)
    for name in task_list:
        if any(char in name for char in "*?["):
            continue
        close = difflib.get_close_matches(name, ours, n=1, cutoff=0.75)
        if close or name.startswith(("steer_", "compose_")):
            hint = f"did you mean {close[0]}? " if close else ""
            raise TaskNameError(f"unknown task {name!r}; {hint}steer-eval's tasks are {OUR_TASKS}")


def patch_task_manager(manager_class) -> None:
    """Make every TaskManager see our folder and name our tasks' misspellings (idempotent)."""
    if getattr(manager_class, "_steer_eval", False):
        return
    original_init, original_match = manager_class.__init__, manager_class.match_tasks
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.arguments["include_path"] = with_our_tasks(bound.arguments.get("include_path"))
        original_init(*bound.args, **bound.kwargs)

    @functools.wraps(original_match)
    def match_tasks(self, task_list):
        matches = original_match(self, task_list)
        if not matches:
            check_unmatched(list(task_list), self.task_index)
        return matches

    manager_class.__init__, manager_class.match_tasks, manager_class._steer_eval = __init__, match_tasks, True


def report_user_errors() -> None:
    """An uncaught UserError (bad model_args, missing tokens, ...) ends lm-eval with one line, not a traceback."""
    previous = sys.excepthook
    if getattr(previous, "_steer_eval", False):
        return

    def excepthook(kind, error, traceback):
        if isinstance(error, UserError):
            print(f"steer-eval: error: {error}", file=sys.stderr)
        else:
            previous(kind, error, traceback)

    excepthook._steer_eval = True
    sys.excepthook = excepthook
