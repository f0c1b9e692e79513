"""The README's set-up and first steps match what the code and the test command do."""

from __future__ import annotations

import re
from pathlib import Path

from proxy.cli import banner
from proxy.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def test_set_up_names_every_debian_package_the_test_command_installs():
    packages = re.findall(r"missing\+=\(([\w-]+)\)", (ROOT / "scripts" / "test").read_text())
    assert len(packages) >= 4, packages
    for package in packages:
        assert f"`{package}`" in section("Set-up"), package


def test_use_says_the_sdk_needs_a_key_even_for_a_local_upstream():
    use = section("Use")
    assert "export OPENAI_API_KEY=" in use and "OPENAI_API_KEY=none" in use
    assert "local upstream" in use


def test_the_start_up_line_shown_is_the_default_one():
    shown = next(line for line in section("Use").splitlines() if line.startswith("seedproxy "))

    def general(line: str) -> str:  # the version and the event loop vary
        return re.sub(r"^seedproxy \S+ (.*) \| loop \w+ \|", r"seedproxy V \1 | loop L |", line)

    assert general(shown) == general(banner(load_settings(None, {})))
