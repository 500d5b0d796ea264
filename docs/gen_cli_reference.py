"""Write cli.md at build time (mkdocs-gen-files): the help of `steer-eval` and every subcommand, from the parser
itself (`steer_eval.cli.main.build_parser()`), so the reference cannot drift from the code."""
import argparse
import os

import mkdocs_gen_files

os.environ["COLUMNS"] = "110"  # argparse wraps help to the terminal width: fix it for a stable page

from steer_eval.cli.main import build_parser  # noqa: E402


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(path, parser) for this parser and every subcommand below it, depth first, in declaration order."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def page() -> str:
    parts = ["# Command-line reference", "",
             "Generated when the documentation is built, from `steer_eval.cli.main.build_parser()`: each command's "
             "`--help`. `python -m steer_eval.cli` is the same command as `steer-eval`. Examples: "
             "[Command line](command-line.md).", ""]
    for path, parser in commands(build_parser(), ("steer-eval",)):
        parts += [f"## `{' '.join(path)}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


with mkdocs_gen_files.open("cli.md", "w") as out:
    out.write(page())
