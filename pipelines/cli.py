"""The `vqgen` command: flags generated from the config dataclasses (``pipelines.flags``, parsed by tyro), the
commands in ``pipelines.commands``. Training commands also read recipe files: ``--config FILE.yaml`` (flags
override it) and ``--print-config`` (the resolved settings as such a file)."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys

from .commands import COMMANDS, Command
from .flags import Parsed, dataclass_group, load_config_file, parse, to_yaml

DESCRIPTION = "Tokenize images and audio, model the tokens, generate."


@functools.cache  # the flags come from the registries, which do not change within a process
def _groups(name: str, cmd: Command) -> list:
    return [dataclass_group(name, cmd.options), *cmd.groups()]


def _recipe_flags(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """argv without ``--config FILE`` and ``--print-config`` (which tyro does not know), and their values."""
    rest, config, show = [], None, False
    it = iter(argv)
    for tok in it:
        if tok == "--config" or tok.startswith("--config="):
            config = tok.split("=", 1)[1] if "=" in tok else next(it, None)
            if not config:
                raise ValueError("--config needs a file: --config recipe.yaml")
        elif tok in ("--print-config", "--print_config"):
            show = True
        else:
            rest.append(tok)
    return rest, config, show


def parse_command(argv: list[str]) -> tuple[str, Parsed, bool]:
    """(command name, its parsed flags, whether --print-config was asked). Exits with tyro's message on bad flags."""
    name, rest = argv[0], argv[1:]
    cmd = COMMANDS[name]
    groups = _groups(name, cmd)
    rest, config_file, show = _recipe_flags(rest) if cmd.trains else (rest, None, False)
    known = {f.name for g in groups for f in g.flags}
    config = load_config_file(config_file, known, name) if config_file else {}
    description = cmd.help + (". Settings can come from a recipe: --config FILE.yaml (flags override it); "
                              "--print-config writes the resolved settings as one." if cmd.trains else ".")
    return name, parse(rest, groups, prog=f"vqgen {name}", description=description, config=config), show


def print_config(name: str, a: Parsed) -> None:
    """The resolved settings as a recipe file: every option, and of the model only the chosen components' fields."""
    from .commands import PRIOR_MODEL, TOKENIZER_MODEL, prior_model_fields, tokenizer_model_fields

    values = {k: v for k, v in a.values.items() if k not in ("quiet", "debug")}
    model_title = PRIOR_MODEL if name == "train-prior" else TOKENIZER_MODEL
    group = next(g for g in a.groups if g.title == model_title)
    model = (prior_model_fields if name == "train-prior" else tokenizer_model_fields)(a)
    values = {k: v for k, v in values.items() if k not in {f.name for f in group.flags}}
    print(f"# vqgen {name} --config FILE: the settings of this run", end="\n")
    if name == "train-tokenizer" and "lr" not in a.explicit:  # a written lr would count as given: the family's is kept
        values.pop("lr", None)
        print(f"# lr: the autoencoder family's default ({a.values['lr']:g}; the spectral audio codec: 1e-3)")
    print(to_yaml(model | values), end="")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: vqgen COMMAND [--help] ...\n\n{DESCRIPTION}\n\ncommands:"]
    lines += [f"  {name:<{width}}  {cmd.help}" for name, cmd in COMMANDS.items()]
    lines += ["", "`vqgen COMMAND --help` lists a command's flags; docs/CLI.md has them all."]
    return "\n".join(lines)


def cli_markdown() -> str:
    """docs/CLI.md: every command's ``--help`` at a fixed width, so the file does not depend on the terminal.
    Regenerate with ``python -c "from pipelines.cli import cli_markdown; print(cli_markdown(), end='')" > docs/CLI.md``;
    a test fails when the file and the commands disagree."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "120"
    try:
        parts = ["# The `vqgen` command", "", "Generated from `vqgen COMMAND --help` (the flags come from the config "
                 "dataclasses: `pipelines/commands.py`, `pipelines/options.py`, the training loop's `TrainConfig` and "
                 "each component's config). Worked examples are in the README; recipes in `recipes/`.", "",
                 "```", _usage(), "```"]
        for name in COMMANDS:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
                parse_command([name, "--help"])
            text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()).strip("\n")
            parts += ["", f"## `vqgen {name}`", "", "```", text, "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"vqgen: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "accelerate", "urllib3", "filelock", "fsspec", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        name, a, show = parse_command(argv)
        if show:
            print_config(name, a)
            return 0
        import torch

        torch.manual_seed(a.seed)
        if "device" in a.values and a.device is None:
            a.values["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        return int(COMMANDS[name].run(a) or 0)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: files, full disks (CheckpointWriteError)
        if debug:
            raise
        print(f"vqgen {argv[0]}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
