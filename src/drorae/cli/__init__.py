"""The ``drorae`` command line: a thin ``main`` over one module per command group, each parsing arguments and
calling the library.

- :mod:`.interop`: ``import-rae``, ``import-rae-dit``, ``export-rae``;
- :mod:`.tokenizer`: ``info``, ``reconstruct``, ``train``, ``eval``, ``analyze``, ``scaling``, ``ablate``;
- :mod:`.data`: ``demo``, ``data sample``, ``data shard``;
- :mod:`.generation`: ``stats``, ``cache-latents``, ``train-dit``, ``sample``, ``eval-gen``;
- :mod:`.text`: ``train-t2i``, ``sample-t2i``, ``eval-geneval``;
- :mod:`.hub`: ``push`` (and the model-card side of ``info``).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import data, generation, hub, interop, text, tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drorae", description="DRoRAE visual tokenizer: import, inspect, reconstruct, train, demo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (interop, tokenizer, data, generation, text, hub):
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        if os.environ.get("DRORAE_TRACEBACK"):
            raise
        print(f"drorae {args.command}: error: {err} (set DRORAE_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return 2
