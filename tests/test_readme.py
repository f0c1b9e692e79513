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


def test_the_limits_table_names_real_settings_with_their_defaults():
    """Issue 29, item 6: each bound with a setting says the setting's real default."""
    start = README.index("\n### Limits and timeouts\n")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in README[start : README.index("\n#", start + 1)].splitlines()
        if line.startswith("| ") and not line.startswith(("| what", "| ---"))
    ]
    defaults = load_settings(None, {})
    units = {"s": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "": 1}
    named = 0
    for what, default, setting in rows:
        found = re.fullmatch(r"`(\w+)\.(\w+)`", setting)
        if found is None:
            assert setting.startswith("fixed (`proxy/"), (what, setting)
            assert (ROOT / setting.split("`")[1]).exists(), setting
            continue
        value = getattr(getattr(defaults, found[1]), found[2])
        if default.startswith("no bound"):
            assert value == 0, what
        else:
            number, unit = re.match(r"([\d,.]+) ?(s|KiB|MiB|GiB|)\b", default).groups()
            assert float(number.replace(",", "")) * units[unit] == value, (what, value)
        named += 1
    assert named >= 10
