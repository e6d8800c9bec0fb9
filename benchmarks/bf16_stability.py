"""Is DiT^DH training stable in bf16? The same steps in bf16 autocast and in fp32, from the same weights and data.

RAE's users report stage-2 losses turning NaN under bf16 after 67k steps (RAE issue 26) and recommend fp32. This
runs ``--steps`` DiT^DH training steps (``drorae train-dit``'s step: flow-matching loss, backward, clip 1.0, AdamW
2e-4 with betas (0.9, 0.95) and no weight decay, the paper's settings) twice from one initialisation, once under
bf16 autocast and once in fp32, on the same stream of latents and noise, and reports whether any loss or gradient
norm turned non-finite, and the two loss curves (per-step values and their means over windows of ``--window``).

The latents are random but structured (a per-class mean plus noise), so the loss falls as it does on real data;
nothing is downloaded.

    python benchmarks/bf16_stability.py --device cpu --preset DiTDH-tiny --latent 16 4 4 --steps 20 --batch 4
    python benchmarks/bf16_stability.py --device cuda --preset DiTDH-S --steps 2000 --batch 256 --json s.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from drorae.generation import DiT, DiTConfig  # noqa: E402
from drorae.generation.flow import dimension_shift, flow_matching_loss, time_from_uniform  # noqa: E402


def run(cfg: DiTConfig, state: dict, batch: int, steps: int, device, bf16: bool, seed: int) -> dict:
    """``steps`` training steps from ``state``; per-step loss and gradient norm, read back once at the end."""
    model = DiT(cfg).to(device)
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0)
    c = model.config
    shape = (c.in_channels, c.input_size, c.input_size)
    shift = dimension_shift(math.prod(shape))
    g = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(c.num_classes, *shape, generator=g).to(device)  # per-class structure to learn
    losses = torch.zeros(steps, device=device)
    norms = torch.zeros(steps, device=device)
    t0 = time.perf_counter()
    for i in range(steps):
        y = torch.randint(0, c.num_classes, (batch,), generator=g).to(device)
        x = centres[y] + 0.5 * torch.randn(batch, *shape, generator=g).to(device)
        noise = torch.randn(batch, *shape, generator=g).to(device)
        t = time_from_uniform(torch.rand(batch, generator=g, dtype=torch.float64), "logit-normal", shift).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = flow_matching_loss(model, x, noise, t.to(device), y)
        loss.backward()
        norms[i] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[i] = loss.detach()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    losses, norms = losses.cpu().tolist(), norms.cpu().tolist()  # one read-back: no sync inside the loop
    return {
        "losses": losses,
        "grad_norms": norms,
        "nonfinite_loss_steps": [i for i, v in enumerate(losses) if not math.isfinite(v)],
        "nonfinite_grad_steps": [i for i, v in enumerate(norms) if not math.isfinite(v)],
        "seconds": seconds,
        "steps_per_s": steps / seconds,
    }


def windows(values: list[float], size: int) -> list[float]:
    return [statistics.fmean(values[i : i + size]) for i in range(0, len(values), size)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="DiTDH-S")
    p.add_argument("--latent", type=int, nargs=3, default=[768, 16, 16], metavar=("C", "H", "W"))
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--window", type=int, default=100, help="steps per averaged point of the curves")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    c, h, _ = args.latent
    cfg = DiTConfig(preset=args.preset, in_channels=c, input_size=h, num_classes=args.classes)
    torch.manual_seed(args.seed)
    state = {k: v.clone() for k, v in DiT(cfg).state_dict().items()}
    results = {"preset": args.preset, "latent": args.latent, "batch": args.batch, "steps": args.steps}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        results[name] = run(cfg, state, args.batch, args.steps, device, bf16, args.seed)
    window = max(1, min(args.window, args.steps))
    curves = {name: windows(results[name]["losses"], window) for name in ("bf16", "fp32")}
    finite = all(math.isfinite(v) for v in curves["bf16"] + curves["fp32"])
    results["curves"] = {"window": window, **curves}
    results["stable_bf16"] = not (results["bf16"]["nonfinite_loss_steps"] or results["bf16"]["nonfinite_grad_steps"])
    results["max_relative_gap"] = (
        max(abs(a - b) / abs(b) for a, b in zip(curves["bf16"], curves["fp32"]) if b) if finite else None
    )
    print(
        f"{args.preset} {args.steps} steps, batch {args.batch}: bf16 finite={results['stable_bf16']}, "
        f"final window loss bf16 {curves['bf16'][-1]:.4f} vs fp32 {curves['fp32'][-1]:.4f}, "
        f"largest gap between the windowed curves {results['max_relative_gap']}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
