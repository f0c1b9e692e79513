"""The layered loader: defaults < TOML file < ``SEEDPROXY_<SECTION>_<KEY>`` environment <
CLI flags, each error naming where the user set the value."""

from __future__ import annotations

import enum
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from .schema import SECTIONS, ConfigError, FieldError, Settings
from .values import SCALARS, choice, did_you_mean, strings

ENV_PREFIX = "SEEDPROXY_"


def _coerce(hint: Any, parser: Callable[[Any], Any] | None, value: Any, from_text: bool) -> Any:
    """Check ``value`` against the field's type; text from env/flags is converted first."""
    if parser is not None:
        return parser(value)
    origin = typing.get_origin(hint)
    if origin is Literal:
        return choice(typing.get_args(hint), value)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):  # the modes: parsed once, here
        return hint(choice(tuple(hint), value))
    if origin is tuple:
        return strings(value, from_text)
    if hint in SCALARS:
        return SCALARS[hint](value, from_text)
    raise TypeError(f"unsupported setting type {hint!r}")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class _Given:
    """One value as the user gave it, with the name they gave it under (an environment
    variable, a flag or a file's ``section.key``), so an error can name that."""

    value: Any
    source: str
    from_text: bool  # text from the environment or a flag, converted before checking


_Layer = dict[str, dict[str, _Given]]


def _checked(section: str, given: Mapping[str, _Given]) -> dict[str, Any]:
    """The section's values converted and checked against its field types."""
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for key, g in given.items():
        parser = known[key].metadata.get("parse")
        try:
            out[key] = _coerce(hints[key], parser, g.value, g.from_text)
        except ValueError as exc:  # a table in an array names itself: "[2].pattern: ..."
            where = "" if str(exc).startswith("[") else ": "
            raise ConfigError(f"{g.source}{where}{exc}") from None
    return out


def _keys(section: str) -> list[str]:
    return [f.name for f in fields(SECTIONS[section])]


def _env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


def _unknown_key(source: str, section: str, key: str, in_env: bool) -> ConfigError:
    """``source`` names a key ``section`` does not have: the close one (spelled as the user
    would set it), or all of them."""
    return ConfigError(
        f"{source}: unknown key"
        + (
            did_you_mean(
                key,
                _keys(section),
                lambda k: _env_name(section, k) if in_env else f"{section}.{k}",
            )
            or f" (the [{section}] keys: {', '.join(_keys(section))})"
        )
    )


def _env_layer(env: Mapping[str, str]) -> _Layer:
    """``SEEDPROXY_<SECTION>_<KEY>`` variables of a known section. Any other ``SEEDPROXY_*``
    variable is someone else's (Kubernetes service links such as ``SEEDPROXY_PORT`` and
    ``SEEDPROXY_SERVICE_HOST`` for a Service named seedproxy, a wrapper's own) and ignored;
    a key a known section does not have is a typo, and stops the proxy."""
    layer: _Layer = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        section, underscore, key = var[len(ENV_PREFIX) :].lower().partition("_")
        if not underscore or (section not in SECTIONS and section != "prices"):
            continue
        if section == "prices":
            raise ConfigError(f"{var}: [prices] can only be set in the config file")
        if key not in _keys(section):
            raise _unknown_key(var, section, key, in_env=True)
        layer.setdefault(section, {})[key] = _Given(value, var, True)
    return layer


def _file_layer(path: Path, source: str) -> tuple[_Layer, dict[str, Any]]:
    """The TOML file's sections, and its raw ``[prices]`` table."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {path} is not valid TOML: {exc}") from None
    layer: _Layer = {}
    for section, values in data.items():
        if section == "prices":
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{section}: unknown section"
                + (
                    did_you_mean(section, [*SECTIONS, "prices"])
                    or f" (known: {', '.join(SECTIONS)}, prices)"
                )
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a table like [{section}]")
        for key, value in values.items():
            name = f"{section}.{key}"
            if key not in _keys(section):
                raise _unknown_key(name, section, key, in_env=False)
            layer.setdefault(section, {})[key] = _Given(value, name, False)
    return layer, data.get("prices", {})


def _prices(raw: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    prices = {}
    for model, pair in raw.items():
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and x >= 0 for x in pair
            )
        ):
            raise ConfigError(
                f"prices.{model}: expected [prompt, completion] USD per million "
                f"tokens, got {pair!r}"
            )
        prices[model] = (float(pair[0]), float(pair[1]))
    return prices


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < TOML ``config`` < ``env`` < ``flags`` (``{"section.key": value}``).
    ``flag_names`` (``{"cache.mode": "--mode"}``) lets an error name the flag the user typed."""
    env = os.environ if env is None else env
    config_source = "--config" if config else ENV_PREFIX + "CONFIG"
    config = config or env.get(ENV_PREFIX + "CONFIG")
    layers: list[_Layer] = []
    prices: dict[str, tuple[float, float]] = {}
    if config:
        file_layer, raw_prices = _file_layer(Path(config), config_source)
        layers.append(file_layer)
        prices = _prices(raw_prices)
    layers.append(_env_layer(env))
    flag_layer: _Layer = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            source = (flag_names or {}).get(dotted, dotted)
            flag_layer.setdefault(section, {})[key] = _Given(value, source, True)
    layers.append(flag_layer)
    given: _Layer = {s: {} for s in SECTIONS}
    for layer in layers:
        for section, values in layer.items():
            given[section].update(values)
    built = {}
    for section, cls in SECTIONS.items():
        try:
            built[section] = cls(**_checked(section, given[section]))
        except FieldError as exc:
            g = given[section].get(exc.key)
            raise ConfigError(
                f"{g.source if g else section + '.' + exc.key}: {exc.problem}"
            ) from None
    return Settings(**built, prices=prices)
