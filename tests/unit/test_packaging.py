"""What the wheel and the sdist promise: one version source, and the licence they declare shipped
beside the code (checked on pyproject.toml; `pyproject-build` shows the files in both archives)."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

import airflow_provider_reve

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_version_has_one_source_the_packages_init():
    project = PYPROJECT["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    source = REPO / PYPROJECT["tool"]["hatch"]["version"]["path"]
    declared = re.search(r'^__version__ = "([^"]+)"$', source.read_text(), re.M)
    assert declared is not None
    assert declared.group(1) == airflow_provider_reve.__version__


def test_the_apache_2_licence_the_project_declares_ships_in_the_wheel_and_the_sdist():
    text = (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "LICENSE" in PYPROJECT["project"]["license-files"]  # the wheel's dist-info/licenses/
    assert "LICENSE" in PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
