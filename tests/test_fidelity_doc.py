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
