"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard and a progress bar (rank 0 only)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor


class RunLogger:
    """Scalars per logged step to ``<out>/metrics.jsonl`` and ``<out>/tensorboard/``, and to a tqdm bar
    (or one printed line per log when there is no terminal). Disabled on ranks other than 0."""

    def __init__(
        self,
        out: Path,
        *,
        enabled: bool,
        progress: bool,
        desc: str,
        total: int,
        initial: int,
        total_label: int,
        purge_step: int | None = None,
    ):
        self.out, self.enabled, self.desc, self.total_label = out, enabled, desc, total_label
        self.history: list[dict] = []
        self.writer = self.bar = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)
        except ImportError:  # tensorboard not installed: logs still go to metrics.jsonl
            self.writer = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        """``record`` holds ``step``, ``lr``, ``images_per_s`` and float losses (``disc/...`` kept off the bar)."""
        if not self.enabled:
            return
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}" if "/" not in k else k, v, record["step"])
        main_keys = [k for k in record if k not in ("step", "lr", "images_per_s") and not k.startswith("disc/")][:4]
        text = " ".join(f"{k}={record[k]:.4g}" for k in main_keys)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text} {record['images_per_s']:.1f} img/s")
        else:
            print(
                f"{self.desc} step {record['step']}/{self.total_label} lr={record['lr']:.3g} {text} "
                f"{record['images_per_s']:.1f} img/s",
                flush=True,
            )

    def image(self, tag: str, image: Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
