"""psm_jax/train_eval.py: when the trainer evaluates, and the eval a preempted run still owes."""
from __future__ import annotations

import json
from pathlib import Path

from psm_jax import train_eval
from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]


def _cfg(every, total):
    return load_config(f"{REPO / 'configs' / 'psm.py'}:tiny", {"eval.every": every, "total_steps": total})


def test_eval_steps():
    cfg = _cfg(4, 10)
    assert [s for s in range(0, 11) if train_eval.is_eval_step(cfg, s)] == [4, 8, 10]
    assert not any(train_eval.is_eval_step(_cfg(0, 10), s) for s in range(11))


def test_a_resumed_run_reruns_the_eval_it_missed(tmp_path):
    cfg = _cfg(4, 10)
    assert train_eval.pending_step(cfg, tmp_path, 0) is None          # fresh run: nothing owed
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 4, "g_loss": 1.0}) + "\n")
    assert train_eval.pending_step(cfg, tmp_path, 4) == 4              # checkpoint 4, no eval record
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "eval/l1_ho')                              # a line cut by the kill
        f.write("\n" + json.dumps({"step": 4, "eval/l1_hole": 30.0}) + "\n")
    assert train_eval.pending_step(cfg, tmp_path, 4) is None
    assert train_eval.pending_step(cfg, tmp_path, 6) is None           # not an eval step
