"""A training run's checkpoint (`<out_dir>/ckpt.pt`): run id, settings, step, trained vectors, optimiser, schedule,
RNG states and the log's size, enough for an exact continuation. Written to a temporary file and renamed; read with
weights_only=True and every field checked, so a damaged or crafted file is one line, never code run or a crash.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from steer_eval.errors import brief, quoted
from steer_eval.training.inputs import TrainingInputError, read_input

CHECKPOINT_FIELDS = {"run": str, "config": dict, "step": int, "vectors": dict, "optimizer": dict, "scheduler": dict,
                     "torch_rng": torch.Tensor, "python_rng": tuple, "log_position": int,
                     "cuda_rng": (list, type(None))}


def save_checkpoint(path, run: str, config: dict, step: int, params: dict, optimizer, scheduler,
                    log_position: int) -> None:
    """Everything an exact continuation needs, written to a temporary file and renamed: an interrupt never leaves a
    half-written checkpoint. `log_position`: the log's size now (a resume drops what was logged after it)."""
    state = {"run": run, "config": config, "step": step,
             "vectors": {name: p.detach().cpu() for name, p in params.items()},
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(), "log_position": log_position,
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def restore_checkpoint(checkpoint: dict, path, params: dict, optimizer, scheduler) -> int:
    """Put the vectors, optimiser, schedule and RNG states back as they were at the checkpoint's step (returned)."""
    try:
        with torch.no_grad():
            for name, p in params.items():
                if checkpoint["vectors"][name].shape != p.shape:
                    raise ValueError(f"vector {name} has shape {tuple(checkpoint['vectors'][name].shape)}, "
                                     f"the model's is {tuple(p.shape)}")
                p.copy_(checkpoint["vectors"][name])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["torch_rng"])
        random.setstate(checkpoint["python_rng"])
        if checkpoint["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
        raise TrainingInputError(f"{path} does not fit this run ({brief(error, 160)}); move it away "
                                 "(--resume then starts the run from step 0), or --restart") from None
    return checkpoint["step"]


def read_checkpoint(path, fields: dict) -> dict:
    """A checkpoint loaded with weights_only=True (a crafted pickle cannot run code), its top-level keys and their
    types checked against `fields` (name -> type or tuple of types)."""
    fix = "move it away (--resume then starts the run from step 0), or --restart to start over"
    read_input(path, fix)  # directory, empty, unreadable
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the unpickler says, the file is not ours
        raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote ({brief(error, 160)}); "
                                 f"{fix}") from None
    if not isinstance(checkpoint, dict):
        raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote (it holds a "
                                 f"{type(checkpoint).__name__}, not a dict); {fix}")
    for name, kind in fields.items():
        if name not in checkpoint:
            raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote (no {name}); {fix}")
        if not isinstance(checkpoint[name], kind) or (isinstance(checkpoint[name], bool) and kind is int):
            raise TrainingInputError(f"{path} is not a checkpoint this trainer wrote ({name} is a "
                                     f"{type(checkpoint[name]).__name__}); {fix}")
    return checkpoint


def check_checkpoint_state(checkpoint: dict, path, names, total_steps: int) -> None:
    """What a run's checkpoint must hold for its trained vectors `names`, before any model loads: one 1-D float
    tensor per name (all of one length; the optimiser's state of the same shape) and a step within the run."""
    vectors, problem = checkpoint["vectors"], None
    shapes = {tuple(v.shape) for v in vectors.values() if hasattr(v, "shape")}
    if sorted(vectors, key=str) != sorted(names):
        problem = f"its vectors are {quoted(sorted(vectors, key=str), 60)}, the run trains {names}"
    elif len(shapes) != 1 or not all(getattr(v, "ndim", 0) == 1 and v.is_floating_point() for v in vectors.values()):
        problem = f"its vectors are not 1-D float tensors of one length (shapes {quoted(sorted(shapes), 60)})"
    elif not 0 <= checkpoint["step"] <= total_steps:
        problem = f"step {checkpoint['step']} is outside the run's 0..{total_steps}"
    elif checkpoint["log_position"] < 0:
        problem = f"log position {checkpoint['log_position']}"
    else:
        groups, state = checkpoint["optimizer"].get("param_groups"), checkpoint["optimizer"].get("state")
        if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
                and isinstance(groups[0].get("params"), list) and len(groups[0]["params"]) == len(names)
                and isinstance(state, dict)):
            problem = "its optimiser state is not that of this run's vectors"
        elif any(hasattr(t, "shape") and t.ndim and tuple(t.shape) not in shapes
                 for entry in state.values() if isinstance(entry, dict) for t in entry.values()):
            problem = "its optimiser state has tensors of another shape than its vectors"
    if problem:
        raise TrainingInputError(f"{path} is not a checkpoint of this run ({problem}); move it away (--resume then "
                                 "starts the run from step 0), or --restart to start over")
