"""Errors the command line reports in one line: `UserError` (the user can fix it, exit 2) and `WorkerFailedError`
(workers kept dying, exit 1)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused request; the message names the problem and the fix."""


class RunMismatchError(UserError):
    """An output folder holds records of another run (model, tokens, generation settings, scorer)."""


class RecordFileError(UserError):
    """A records file that cannot be read as records (corrupt line in the middle, wrong content)."""


class SettingError(UserError, ValueError):
    """A setting out of its range (e.g. max_new_tokens 0)."""


class PromptTooLongError(UserError, ValueError):
    """A prompt plus the tokens it needs after it does not fit the model's context."""


class WorkerFailedError(RuntimeError):
    """Workers died on the same chunk too often (a node keeps failing, or the chunk itself kills its worker)."""


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, "..." marking a cut: a hostile file or library cannot flood a message."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quoted(value, limit: int = 80) -> str:
    """repr() of a value read from a file, for a one-line message."""
    return clip(repr(value), limit)


def brief(error: BaseException, limit: int = 200) -> str:
    """An exception in a few words for a one-line message: its type and the start of its first line (a library's
    message can quote a whole file's bytes)."""
    text = str(error).strip().split("\n", 1)[0]
    return f"{type(error).__name__}: {clip(text, limit)}" if text else type(error).__name__
