"""The tokenizer's training phases (paper section 3.3, appendix A; table 4 ablations), as one table.

The CLI's ``--phase`` choices, the trainer and the README's phase table all read :data:`PHASES`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    trains: tuple[str, ...]  # parameter groups that get gradients: "backbone", "fusion", "decoder"
    fusion_on: bool  # does the latent go through the fusion module
    decoder_noise: bool  # does the decoder see latent noise (model.noise_tau)
    needs_init: str | None  # which phase's output it must start from (None: may start from scratch)
    adds_fusion: bool  # builds a fresh fusion module (from model.fusion) when the init model has none
    description: str

    @property
    def label(self) -> str:
        return f"phase {self.name}"


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase("1", ("decoder",), False, True, None, False, "decoder on z_base: plain RAE"),
        Phase("2", ("fusion",), True, False, "1", True, "fusion only, beta fixed, decoder frozen"),
        Phase("3", ("decoder",), True, True, "2", False, "decoder fine-tuned on the fused latent, fusion frozen"),
        Phase("joint", ("fusion", "decoder"), True, True, None, True, "fusion and decoder together (ablation)"),
        Phase("full", ("decoder", "backbone"), True, True, "2", False, "decoder and backbone (table 4, row 3)"),
    )
}


def get_phase(name: str) -> Phase:
    if str(name) not in PHASES:
        raise ValueError(f"phase {name!r} is not one of {list(PHASES)}")
    return PHASES[str(name)]


def phase_table_markdown() -> str:
    """The README's phase table, generated from :data:`PHASES` (a test keeps the two equal)."""
    rows = [
        "| phase | trains | fusion | decoder latent noise | starts from (`--init`) | what it is |",
        "|---|---|---|---|---|---|",
    ]
    for p in PHASES.values():
        start = (
            f"phase-{p.needs_init} output"
            if p.needs_init
            else ("scratch or phase-1 output" if p.adds_fusion else "scratch")
        )
        rows.append(
            f"| `{p.name}` | {' + '.join(p.trains)} | {'on' if p.fusion_on else 'off'} | "
            f"{'yes' if p.decoder_noise else 'no'} | {start} | {p.description} |"
        )
    return "\n".join(rows)
