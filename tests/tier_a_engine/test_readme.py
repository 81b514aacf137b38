"""The README's model table is the catalog's, and its two commands are the ones CI and users run."""
from __future__ import annotations

from partid_rig import REPO

from partid.models.catalog import readme_table

README = (REPO / "README.md").read_text()


def test_model_table_is_generated_from_the_catalog():
    assert readme_table() in README


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pytest\n```" in README and "python -m pytest" in ci
    assert "PartID/workflows/api/consistentid_sd15_api.json --image" in README
    assert (REPO / "workflows" / "api" / "consistentid_sd15_api.json").is_file()
