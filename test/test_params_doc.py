"""config/adapt.yaml and the README's parameter table are the nodes' PARAMS tables, generated:
a drift fails here (run `make params`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from maml_ros.ros import params_doc

REPO = Path(__file__).resolve().parents[1]


def test_committed_files_are_the_generated_ones() -> None:
    assert params_doc.main(["--check", "--root", str(REPO)]) == 0


def test_every_parameter_and_default_is_in_the_yaml() -> None:
    config = yaml.safe_load(params_doc.render_yaml())
    for node, table in params_doc.NODE_TABLES.items():
        section = config[f"/**/{node}"]["ros__parameters"]
        assert section == {spec.name: spec.default for spec in table}, node


def test_a_changed_table_is_detected(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "adapt.yaml").write_text((REPO / "config" / "adapt.yaml").read_text())
    (tmp_path / "README.md").write_text((REPO / "README.md").read_text())
    assert params_doc.main(["--check", "--root", str(tmp_path)]) == 0
    table = list(params_doc.NODE_TABLES["adaptation"])
    table[0] = dataclasses.replace(table[0], description="something else")
    monkeypatch.setitem(params_doc.NODE_TABLES, "adaptation", table)
    assert params_doc.main(["--check", "--root", str(tmp_path)]) == 1
    assert params_doc.main(["--write", "--root", str(tmp_path)]) == 0
    assert "something else" in (tmp_path / "README.md").read_text()
    assert params_doc.main(["--check", "--root", str(tmp_path)]) == 0
