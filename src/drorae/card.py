"""Model cards (``README.md`` with Hub YAML front matter) of drorae model directories, and :func:`push_to_hub`.

``save_pretrained`` (tokenizer, DiT, MoT) writes the card; ``drorae push`` refreshes it before uploading. It says
what the model is (kind, latent, latent rule, fusion, backbone id), how it was trained (``training.json`` or the
config's training record, and the run's ``train_config.yaml`` when the model is a run's ``model/``), the numbers of
the ``drorae eval`` (``report.json``) and ``drorae eval-gen`` (``eval_gen.json``) reports found beside it, how to
load it, and the papers it implements. A ``README.md`` without drorae's marker line is the user's and is kept.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .hub import CARD_NAME, is_hub_id
from .serialization import read_json

MARK = "<!-- drorae model card: rewritten by save_pretrained and drorae push; delete this line to keep your edits -->"
HINTS = "<!-- drorae-card-data "
PAPERS = {
    "drorae": "DRoRAE (Depth-Routed Representation AutoEncoder): [arXiv 2605.10780](https://arxiv.org/abs/2605.10780)",
    "rae": "RAE, Diffusion Transformers with Representation Autoencoders: "
    "[arXiv 2510.11690](https://arxiv.org/abs/2510.11690)",
    "raev2": "RAEv2, Improved Baselines with Representation Autoencoders: "
    "[arXiv 2605.18324](https://arxiv.org/abs/2605.18324)",
    "bagel": "Bagel, Emerging Properties in Unified Multimodal Pretraining: "
    "[arXiv 2505.14683](https://arxiv.org/abs/2505.14683)",
}
TAGS = {
    "tokenizer": ["drorae", "image-tokenizer", "autoencoder", "representation-autoencoder"],
    "dit": ["drorae", "diffusion-transformer", "class-conditional", "flow-matching", "representation-autoencoder"],
    "mot": ["drorae", "text-to-image", "mixture-of-transformers", "bagel", "flow-matching"],
}
#: Hub tasks: reconstruction for a tokenizer; the Hub has no class-conditional task, so a DiT is an image generator
PIPELINE_TAGS = {"tokenizer": "image-to-image", "dit": "unconditional-image-generation", "mot": "text-to-image"}
REPORTS = {"report.json": "drorae eval", "eval_gen.json": "drorae eval-gen"}
DEFAULT_LICENSE = "apache-2.0"


def model_kind(directory: str | os.PathLike) -> str | None:
    """``"tokenizer"``, ``"dit"`` or ``"mot"`` from ``directory/config.json``; None for anything else."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        config = read_json(path, "a drorae config.json")
    except (ValueError, OSError):
        return None
    if config.get("format") == "drorae-mot":
        return "mot"
    return {"DRoRAE": "tokenizer", "DiT": "dit"}.get(config.get("_class_name"))


def read_model_card(path: str | os.PathLike) -> tuple[dict, str]:
    """``(front matter, body)`` of a ``README.md``; front matter is ``{}`` when there is none."""
    return parse_model_card(Path(path).read_text(encoding="utf-8"), str(path))


def parse_model_card(text: str, source: str = "the card") -> tuple[dict, str]:
    import yaml

    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end > 0:
            meta = yaml.safe_load(text[4:end]) or {}
            if not isinstance(meta, dict):
                raise ValueError(f"{source}: its YAML front matter is a {type(meta).__name__}, not a mapping")
            return meta, text[end + 5 :]
    return {}, text


def find_reports(directory: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The eval / eval-gen reports beside a model: in its directory, in the run directory when it is a run's
    ``model/``, and one folder below either (``<run>/eval/report.json``, ``<run>/samples/eval_gen.json``)."""
    directory = Path(directory)
    roots = [directory] + ([directory.parent] if directory.name == "model" else [])
    found: dict[Path, dict] = {}
    for root in roots:
        folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name != "checkpoints")
        for folder in folders:
            for name in REPORTS:
                path = folder / name
                if path.is_file() and path.resolve() not in found:
                    try:
                        report = read_json(path, "a drorae report")
                    except (ValueError, OSError):
                        continue
                    if isinstance(report.get("metrics"), dict):
                        found[path.resolve()] = report
    return [(path, report) for path, report in found.items()]


def _hints(directory: Path) -> dict:
    """The facts a previous card recorded that the files alone do not give (the parameter counts)."""
    path = directory / CARD_NAME
    if not path.is_file():
        return {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(HINTS) and line.endswith(" -->"):
            try:
                return json.loads(line[len(HINTS) : -4])
            except json.JSONDecodeError:
                return {}
    return {}


def _tokenizer_facts(config: dict) -> tuple[str, list[str], list[str], str | None]:
    bb, dec, fusion = config.get("backbone") or {}, config.get("decoder") or {}, config.get("fusion")
    c, n = bb.get("hidden_size") or dec.get("latent_dim"), dec.get("num_patches")
    grid = math.isqrt(n) if n else None
    hub_id, name = config.get("_backbone_id"), bb.get("name_or_path")
    source = f"`{hub_id or name}`" if hub_id or name else "a random backbone"
    if name == "backbone":
        source = f"{source if hub_id else 'a random or local backbone'}, stored in `backbone/`"
    layers, global_mean = bb.get("latent_layers"), bb.get("latent_global_mean")
    if layers:
        rule = f"RAEv2's layer mean of the LN_bb outputs of blocks {layers}" + (
            " plus the deepest block's token mean" if global_mean else ""
        )
    else:
        rule = "RAE's latent, the last block's LN_bb-normalised tokens"
    if fusion is None:
        fused = "none (plain RAE)"
    else:
        fused = (
            f"depth-routed fusion {'on' if config.get('fusion_enabled', True) else 'off'}: routing "
            f"{fusion.get('routing')}, correction {fusion.get('correction')}, beta {fusion.get('beta')}, expert "
            f"width {fusion.get('expert_hidden')}, fused blocks {fusion.get('layers') or 'all'}"
        )
    title = "a DRoRAE image tokenizer" if fusion is not None else "an RAE image tokenizer (no fusion)"
    facts = [
        f"backbone (frozen): {source}, {bb.get('num_layers')} blocks of width {c}, input {bb.get('input_size')} px",
        f"latent: [{c}, {grid}, {grid}]; rule: {rule}",
        f"fusion: {fused}",
        f"latent normalisation: {'per-position mean/std' if config.get('latent_norm') else 'none'}, scaling factor "
        f"{config.get('scaling_factor')}",
        f"decoder: ViT width {dec.get('hidden_size')}, {dec.get('num_layers')} blocks, {dec.get('num_heads')} heads, "
        f"patch {dec.get('patch_size')}",
    ]
    papers = ["drorae", "rae"] if fusion is not None else ["rae"]
    if layers:
        papers.append("raev2")
    return title, facts, papers, config.get("_backbone_id")


def _generator_facts(kind: str, config: dict, extra: dict) -> tuple[str, list[str], list[str], str | None]:
    facts = []
    if kind == "dit":
        kind_name = "DiT^DH" if config.get("head_depth") else "DiT"
        title = f"a class-conditional {kind_name} generator of tokenizer latents"
        facts.append(
            f"network: {kind_name}, trunk width {config.get('hidden_size')} x {config.get('depth')} blocks"
            + (
                f", head width {config.get('head_hidden_size')} x {config.get('head_depth')}"
                if kind_name != "DiT"
                else ""
            )
            + f", {config.get('num_classes')} classes"
        )
        facts.append(f"latent: [{config.get('in_channels')}, {config.get('input_size')}, {config.get('input_size')}]")
        if config.get("guidance_head_block"):
            facts.append(f"free-guidance head on block {config['guidance_head_block']} (RAEv2)")
        papers = ["rae"] + (["raev2"] if config.get("guidance_head_block") else []) + ["drorae"]
        base = extra.get("tokenizer")
    else:
        cfg = config.get("config") or {}
        llm = cfg.get("llm") or {}
        title = "a text-to-image Mixture-of-Transformers (Bagel) generator of tokenizer latents"
        facts.append(
            f"network: Bagel's MoT on a Qwen2 LLM of width {llm.get('hidden_size')} x {llm.get('num_hidden_layers')} "
            f"layers, LLM `{extra.get('llm') or 'unrecorded'}`"
        )
        size = cfg.get("latent_size")
        facts.append(f"latent: [{cfg.get('latent_channels')}, {size}, {size}], patch {cfg.get('latent_patch_size')}")
        papers, base = ["bagel", "drorae"], extra.get("llm")
    if extra.get("tokenizer"):
        facts.append(f"tokenizer (its latent space): `{extra['tokenizer']}`")
    if extra.get("fingerprint"):
        facts.append(f"latent fingerprint: `{extra['fingerprint']}` (the tokenizer's must match)")
    if extra.get("shift") is not None:
        facts.append(f"sampling time shift: {extra['shift']}")
    return title, facts, papers, base if is_hub_id(base) else None


def _training(directory: Path, kind: str, extra: dict) -> list[str]:
    record = {}
    if (directory / "training.json").is_file():
        record = read_json(directory / "training.json", "a training.json")
    elif kind in ("dit", "mot"):
        keys = ("steps", "weights", "ema_decay", "time_distribution", "train_experts", "imported_from")
        record = {k: extra[k] for k in keys if extra.get(k) is not None}
    lines = [f"- {k}: {v}" for k, v in record.items()]
    run_config = directory.parent / "train_config.yaml" if directory.name == "model" else None
    if run_config is not None and run_config.is_file():
        lines += ["", "<details><summary>the run's train_config.yaml</summary>", "", "```yaml"]
        lines += [run_config.read_text(encoding="utf-8").rstrip(), "```", "", "</details>"]
    return lines or ["- not recorded (no training.json or run directory beside this model)"]


def _evaluation(directory: Path) -> list[str]:
    rows = []
    for path, report in find_reports(directory):
        try:
            where = path.relative_to(directory.resolve())
        except ValueError:
            where = path.relative_to(directory.resolve().parent)
        what = REPORTS[path.name]
        if path.name == "report.json":
            what += f", {report.get('num_images')} images of {report.get('data')}"
        else:
            what += f", {report.get('num_samples')} samples vs {report.get('reference')} ({report.get('features')})"
        for key, value in report["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append(f"| {key} | {value!r} | `{where}`: {what} |")
    if not rows:
        return ["No `drorae eval` / `eval-gen` report beside this model yet."]
    return ["| metric | value | report |", "|---|---|---|", *rows]


def _usage(kind: str, name: str, extra: dict) -> list[str]:
    tok = extra.get("tokenizer") or "TOKENIZER"
    if kind == "tokenizer":
        lines = [
            "from drorae import DRoRAE",
            f'tokenizer = DRoRAE.from_pretrained("{name}")',
            "reconstruction = tokenizer.decode(tokenizer.encode(images))  # images: [B, 3, H, W] in [0, 1]",
        ]
    elif kind == "dit":
        lines = [
            "from drorae.generation import DiT",
            f'dit = DiT.from_pretrained("{name}")',
            f"# or: drorae sample --dit {name} --tokenizer {tok} --num-samples 16 --out samples",
        ]
    else:
        lines = [
            "from drorae.generation.text import MoTGenerator",
            f'model = MoTGenerator.from_pretrained("{name}")',
            f"# or: drorae sample-t2i --model {name} --tokenizer {tok} --prompts prompts.txt --out samples",
        ]
    return ["```python", *lines, "```"]


def render_model_card(
    directory: str | os.PathLike,
    *,
    repo_id: str | None = None,
    parameters: dict[str, int] | None = None,
    license: str | None = None,
) -> str:
    """The card of the drorae model in ``directory`` (see the module docstring)."""
    import yaml

    directory = Path(directory)
    kind = model_kind(directory)
    if kind is None:
        raise ValueError(f"{directory} is not a drorae model directory (no tokenizer, DiT or MoT config.json)")
    config = read_json(directory / "config.json", "a drorae config.json")
    hints = _hints(directory)
    old_meta = read_model_card(directory / CARD_NAME)[0] if (directory / CARD_NAME).is_file() else {}
    parameters = parameters or hints.get("parameters")
    if kind == "tokenizer":
        extra = {}
        title, facts, papers, base = _tokenizer_facts(config)
    else:
        extra = config.get("_extra", {}) if kind == "dit" else {k: v for k, v in config.items() if k != "config"}
        title, facts, papers, base = _generator_facts(kind, config, extra)
    name = repo_id or hints.get("repo_id") or str(directory)
    meta: dict[str, Any] = {
        "library_name": "drorae",
        "license": license or old_meta.get("license") or DEFAULT_LICENSE,
        "tags": TAGS[kind],
        "pipeline_tag": PIPELINE_TAGS[kind],
    }
    if base:
        meta["base_model"] = base
    if parameters:
        facts.append("parameters: " + ", ".join(f"{k} {v:,}" for k, v in parameters.items()))
    data = {"kind": kind, "parameters": parameters, "repo_id": repo_id or hints.get("repo_id")}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        MARK,
        HINTS + json.dumps(data, sort_keys=True) + " -->",
        "",
        f"# {name.rsplit('/', 1)[-1]}",
        "",
        f"`{name}` is {title}, saved by drorae {config.get('_drorae_version', '')}".rstrip() + ".",
        "",
        "## Model",
        "",
        *[f"- {fact}" for fact in facts],
        "",
        "## Training",
        "",
        *_training(directory, kind, extra),
        "",
        "## Evaluation",
        "",
        *_evaluation(directory),
        "",
        "## Usage",
        "",
        *_usage(kind, name, extra),
        "",
        "## Paper",
        "",
        *[f"- {PAPERS[p]}" for p in papers],
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, **kwargs) -> Path | None:
    """Write (or refresh) ``directory/README.md``; a README.md without drorae's marker is kept (returns None)."""
    path = Path(directory) / CARD_NAME
    if path.is_file() and MARK not in path.read_text(encoding="utf-8"):
        return None
    text = render_model_card(directory, **kwargs)
    tmp = path.with_name(CARD_NAME + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def card_summary(directory: str | os.PathLike) -> list[str]:
    """The lines ``drorae info`` prints for a card: its title, first paragraph, Hub metadata, model facts and
    evaluation rows (any README.md; a directory without one gets the card drorae would write)."""
    directory = Path(directory)
    path = directory / CARD_NAME
    if path.is_file():
        meta, body = read_model_card(path)
    elif model_kind(directory) is not None:
        meta, body = parse_model_card(render_model_card(directory))
    else:
        raise FileNotFoundError(f"{directory} has no {CARD_NAME} and is not a drorae model directory")
    out, section = [], None
    for line in body.splitlines():
        if line.startswith("<!--") or not line.strip():
            continue
        if line.startswith("# ") and not out:
            out.append(line[2:].strip())
        elif line.startswith("## "):
            section = line[3:].strip()
        elif section is None and len(out) == 1:
            out.append("  " + line.strip())
        elif section == "Model" and line.startswith("- "):
            out.append("  " + line[2:])
        elif section == "Evaluation" and line.startswith("| ") and not line.startswith(("| metric", "|---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out.append(f"  {cells[0]} = {cells[1]}" + (f"  ({cells[2]})" if len(cells) > 2 else ""))
    keys = ("library_name", "pipeline_tag", "base_model", "license", "tags")
    out += [f"  {k}: {meta[k]}" for k in keys if meta.get(k) is not None]
    return out


def push_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a saved drorae model directory (tokenizer, DiT or MoT; a run directory's ``model/``) as it is, with
    its model card ``README.md`` refreshed (a card drorae did not write is kept). Returns the commit URL.

    Raises ValueError for a directory that is not a drorae model or a ``repo_id`` that is not ``org/name``."""
    from huggingface_hub import HfApi

    from .hub import parse_hub_id
    from .serialization import model_dir

    source = Path(directory)
    if not source.is_dir():
        raise ValueError(f"{directory} is not a local directory: push takes a saved drorae model directory")
    local = model_dir(source)
    kind = model_kind(local)
    if kind is None:
        raise ValueError(
            f"{directory} is not a drorae model directory (its config.json is no DRoRAE tokenizer, DiT or MoT): "
            "push uploads what save_pretrained / a trainer's model/ wrote"
        )
    target = parse_hub_id(repo_id) if not Path(repo_id).exists() else None
    if target is None or target.revision or target.subfolder:
        raise ValueError(f"repository id {repo_id!r} is not 'org/name' (give --revision for a branch)")
    write_model_card(local, repo_id=repo_id, license=license)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(local),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload drorae {kind} {local.resolve().name}",
        ignore_patterns=["*.tmp", ".cache/**"],
    )
    return str(getattr(info, "commit_url", info))
