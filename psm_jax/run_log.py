"""Training logs: stdout (a tqdm bar on a terminal), ``metrics.jsonl`` and TensorBoard events.

TensorBoard files are written with tensorboardX, so no TensorFlow is needed. Only process 0
logs. Every step's metrics go to ``metrics.jsonl`` (one JSON object per line, with ``step``);
stdout and TensorBoard get every ``log_every``-th step via :meth:`RunLog.step`.

Progress on stdout: on a terminal a tqdm bar (steps, ETA, and as postfix the images/s and the
current generator loss and hole L1); otherwise (logs, CI) one line every ``log_every`` steps
with the same numbers, so a long run piped to a file still says how far it is.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter
from tqdm import tqdm


def _hms(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class RunLog:
    def __init__(self, workdir: Path, *, total_steps: int, start_step: int, enabled: bool = True,
                 progress_bar: bool = True, images_per_step: int = 1, log_every: int = 1):
        self.enabled = enabled
        self.images_per_step = images_per_step
        self.log_every = max(1, log_every)
        self.total_steps = total_steps
        self._t0, self._s0 = time.perf_counter(), start_step
        self._bar = None
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        self._jsonl = open(Path(workdir) / "metrics.jsonl", "a", buffering=1)
        self._tb = SummaryWriter(str(Path(workdir) / "tb"))
        if progress_bar and sys.stderr.isatty():
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             desc="train")

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Appends raw values (e.g. a batch digest) to metrics.jsonl."""
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **values}) + "\n")

    def step(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._t0
        img_s = (step - self._s0) * self.images_per_step / max(elapsed, 1e-9)
        values = {**values, "img_per_s": img_s}
        self.record(step, values)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            postfix = {"img/s": f"{img_s:.1f}", "g": f"{values.get('g_loss', 0):.3f}",
                       "d": f"{values.get('d_loss', 0):.3f}"}
            if "g_l1" in values:
                postfix["l1"] = f"{values['g_l1']:.3f}"
            self._bar.set_postfix(postfix, refresh=False)
        elif step % self.log_every == 0 or step == self.total_steps:
            rate = (step - self._s0) / max(elapsed, 1e-9)
            eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
            loss = f"g_loss={values.get('g_loss', float('nan')):.4g}" + (
                f" hole_l1={values['g_l1']:.4g}" if "g_l1" in values else "")
            print(f"step {step}/{self.total_steps} {img_s:.1f} img/s ETA {_hms(eta)} {loss}", flush=True)
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
            print(f"  {shown}", flush=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Occasional metrics (evaluations): metrics.jsonl, TensorBoard and one printed line."""
        if not self.enabled:
            return
        self.record(step, values)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()) if "/iter" not in k)
        message = f"eval at step {step}: {shown}"
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
