"""The ``iqa-plugins`` command (also ``python -m iqa_plugins``).

Thin on purpose: each sub-command lives in the module that does the work, which exposes
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only for the sub-command
being run, so ``iqa-plugins --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("iqa_plugins.score_command", "score images with any pyiqa no-reference metric (batched)"),
    "generate": ("iqa_plugins.data.generator", "generate a KADID-style multi-distortion data set"),
    "convert": ("iqa_plugins.archs.drexperts_convert", "convert official DR.Experts/DA-CLIP checkpoints"),
    "train": ("iqa_plugins.train.cli", "train DR.Experts or ExIQA (pyiqa's training framework)"),
    "demo": ("iqa_plugins.train.demo", "offline end-to-end demo: generate, label, train, score"),
    "explain": ("iqa_plugins.explain_figure", "one PNG per image: score, expert attention, distortion bars"),
    "report": ("iqa_plugins.report", "one self-contained HTML page over a score file"),
}


def _top_level_help() -> str:
    lines = ["usage: iqa-plugins COMMAND [options]   (iqa-plugins COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_level_help())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from iqa_plugins import __version__

        print(f"iqa-plugins {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"iqa-plugins: unknown command {name!r}\n\n{_top_level_help()}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"iqa-plugins {name}", description=text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
