"""The ``iqa-plugins`` command (also ``python -m iqa_plugins``).

Thin on purpose: each sub-command lives in the module that does the work, which exposes
``add_arguments(parser)`` and ``main(args) -> int``. Modules are imported only for the sub-command
being run, so ``iqa-plugins --help`` stays instant.

Exit status of every command: 0 done; 1 done, but some inputs were skipped (named on stderr); 2 bad
arguments or input, reported in one line that names the file or argument (``IQA_PLUGINS_DEBUG=1`` shows
the traceback); 3 (``score --engine ray``) the Ray job stopped part way, its scores so far kept; 130
interrupted (Ctrl-C), with what was already written kept.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("iqa_plugins.score_command", "score images with any pyiqa no-reference metric (batched)"),
    "generate": ("iqa_plugins.data.generator", "generate a KADID-style multi-distortion data set"),
    "convert": ("iqa_plugins.convert_command", "convert official DR.Experts/DA-CLIP checkpoints"),
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
    from iqa_plugins.runtime import bound_openmp_spin

    bound_openmp_spin()  # before any command imports torch: libgomp reads it once, when it loads
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
    try:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"iqa-plugins {name}", description=text)
        module.add_arguments(parser)
        return int(module.main(parser.parse_args(rest)) or 0)
    except KeyboardInterrupt:
        # Rows and checkpoints already written are kept; a traceback would only hide that line.
        print(f"iqa-plugins {name}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if os.environ.get("IQA_PLUGINS_DEBUG") == "1":
            raise
        print(f"iqa-plugins {name}: {_describe(error)}", file=sys.stderr)
        return 2


# Errors that bad input (files, folders, options) causes; anything else is a bug and keeps its traceback.
USER_ERRORS = (OSError, ValueError, KeyError, ImportError, RuntimeError)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return f"{text} (IQA_PLUGINS_DEBUG=1 shows the traceback)"


if __name__ == "__main__":
    sys.exit(main())
