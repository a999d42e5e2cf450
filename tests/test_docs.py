"""Docs stay true: README's config reference is the rendering of the shipped config, and the README
names the commands that exist."""

from __future__ import annotations

from pathlib import Path

from memwatchd.config_doc import BEGIN, END, render_reference, splice

REPO = Path(__file__).resolve().parent.parent


def test_readme_config_reference_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    toml_text = (REPO / "etc" / "memwatchd.toml").read_text()
    assert BEGIN in readme and END in readme
    assert splice(readme, toml_text) == readme, "run: .venv/bin/python -m memwatchd.config_doc README.md"


def test_reference_lists_every_key_of_the_shipped_config() -> None:
    table = render_reference((REPO / "etc" / "memwatchd.toml").read_text())
    for key in (
        "[daemon] interval",
        "[bpf] enabled",
        "[storage] path",
        "[storage] retention",
        "[notify] urls",
        "[prometheus] listen",
        "[procfs] smaps",
    ):
        assert f"`{key}`" in table


def test_readme_quick_start_has_the_two_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    assert "\nscripts/run " in readme and "\nscripts/test " in readme
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()
