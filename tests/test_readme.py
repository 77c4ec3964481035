"""The README keeps its promises: the two first commands, and every setting with its default."""

from pathlib import Path

from service.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_readme_starts_with_the_serve_and_test_commands():
    commands = [line.split("#")[0].strip() for line in README.splitlines()[:8] if line.startswith("make ")]
    assert commands == ["make run", "make test"]


def test_every_setting_is_documented_in_the_readme():
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README]
    assert not missing, f"settings missing from README: {missing}"
