"""Sharing commands: ``push`` (a saved model directory to the Hugging Face Hub, with its model card), and the card
side of ``info`` (a Hub id, a DiT or a MoT: the card's summary)."""

from __future__ import annotations

import argparse
import json


def card_info(args: argparse.Namespace) -> bool:
    """``drorae info`` of a Hub id (only its ``README.md`` and ``config.json`` are fetched) or of a local DiT / MoT
    directory: print the model card's summary and return True; False leaves a local tokenizer to ``info``."""
    from ..card import card_summary, model_kind, read_model_card
    from ..hub import CARD_NAME, is_hub_id, resolve_model_path
    from ..serialization import model_dir, read_json

    remote = is_hub_id(args.model)
    if remote:
        directory = resolve_model_path(args.model, ("config.json", CARD_NAME), required=("config.json",))
    else:
        directory = model_dir(args.model)
        if model_kind(directory) in (None, "tokenizer"):
            return False  # a tokenizer's full description, or its loader's error for anything else
    if model_kind(directory) is None and not (directory / CARD_NAME).is_file():
        raise ValueError(f"{args.model} is not a drorae model (its config.json is no DRoRAE tokenizer, DiT or MoT)")
    if args.json:
        card = directory / CARD_NAME
        meta = read_model_card(card)[0] if card.is_file() else {}
        config = read_json(directory / "config.json", "a drorae config.json")
        print(json.dumps({"card": meta, "kind": model_kind(directory), "config": config}, indent=2))
        return True
    print(f"{model_kind(directory) or 'model'} {args.model}" + (f" (cached at {directory})" if remote else ""))
    print("\n".join("  " + line for line in card_summary(directory)))
    return True


def _cmd_push(args: argparse.Namespace) -> int:
    from ..card import push_to_hub

    url = push_to_hub(
        args.model,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        license=args.license,
    )
    print(f"pushed {args.model} to https://huggingface.co/{args.repo_id} ({url})")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "push",
        help="upload a saved drorae model directory (tokenizer, DiT, MoT) to the Hugging Face Hub with its card",
        description="Upload MODEL_DIR as it is (a run directory: its model/) to the Hub repository REPO_ID, after "
        "refreshing its model card README.md (kind, latent, training, evaluation reports beside it, usage, "
        "papers). The token is huggingface_hub's (HF_TOKEN or `hf auth login`).",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="a drorae save_pretrained directory or a training run directory")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, org/name (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (created from main when missing; default main)")
    p.add_argument("--message", help="commit message (default: 'Upload drorae <kind> <name>')")
    p.add_argument("--license", help="the card's license (default: the card's, else apache-2.0)")
    p.set_defaults(func=_cmd_push)
