"""docs/FIDELITY.md names real config fields, with their paper-config defaults (issue: fidelity)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from psm_jax.config_lib import load_config

REPO = Path(__file__).resolve().parents[1]
FIELD = re.compile(r"`([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*) = ([^`]+)`")


def _field_cells():
    """(line number, field-column text) of every table row (the 4th column)."""
    out = []
    for n, line in enumerate((REPO / "docs" / "FIDELITY.md").read_text().splitlines(), 1):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and not set(cells[0]) <= set("-") and cells[0] != "topic":
            out.append((n, cells[3]))
    return out


def test_every_row_names_an_existing_field_with_its_paper_default():
    config = load_config(f"{REPO / 'configs' / 'psm.py'}:places512")
    rows = _field_cells()
    assert len(rows) >= 40, "the table lost rows"
    for n, cell in rows:
        fields = FIELD.findall(cell)
        assert fields, f"docs/FIDELITY.md:{n}: no `section.field = default` in {cell!r}"
        for name, default in fields:
            node = config
            for part in name.split("."):
                assert part in node, f"docs/FIDELITY.md:{n}: {name} is not a config field"
                node = node[part]
            want = ast.literal_eval(default)
            got = tuple(node) if isinstance(node, (list, tuple)) else node
            assert got == want, f"docs/FIDELITY.md:{n}: {name} is {got!r} in places512, doc says {want!r}"


def test_readme_links_the_fidelity_table():
    assert "docs/FIDELITY.md" in (REPO / "README.md").read_text()


# Rows that were missing or inexact (issue 24), each with the field it must name. The field itself is
# checked against the paper config by the test above.
ROWS = {
    "hole initial value": "spread.init_value",
    "test-time noise and latent": "spread.test_noise_mode",
    "NLL reduction": "loss.nll_reduction",
    "perceptual reduction": "loss.pcp_reduction",
    "D's loss over the iterations": "spread.train_iters",
    "minibatch-std groups": "discriminator.mbstd_group_size",
    "model D": "spread.decoupled",
    "optimiser": "optim.lr",
    "ablation iterations": "spread.test_iters",
    "decoder blocks": "model.channel_base",
    "number of attention blocks": "model.attention_depth",
    "U-Net depth": "model.num_down",                     # issue 26: Supp. A's H/32 as a field
}


def _rows_by_topic():
    out = {}
    for line in (REPO / "docs" / "FIDELITY.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6:
            out[cells[0]] = cells
    return out


def test_issue24_rows_exist_and_name_their_fields():
    rows = _rows_by_topic()
    for topic, field in ROWS.items():
        assert topic in rows, f"docs/FIDELITY.md has no row {topic!r}"
        assert field in [name for name, _ in FIELD.findall(rows[topic][3])], (topic, rows[topic][3])
    assert "A, D-G: 3/3" in rows["ablation iterations"][2]        # C trains with 2, not 3
    assert "8e-4" in rows["optimiser"][2]                         # G's rescaled lr is stated, not "as written"


def test_every_table_line_has_six_cells():
    """A stray '|' inside a cell splits it, and the row would drop out of the checks above unseen."""
    for n, line in enumerate((REPO / "docs" / "FIDELITY.md").read_text().splitlines(), 1):
        if line.startswith("|"):
            assert len(line.strip().strip("|").split("|")) == 6, f"docs/FIDELITY.md:{n}: not 6 cells"
