"""absl flags generated from `Config`, for the experiment scripts only.

Every Config field becomes a flag whose default is "unset", so the value
comes from --preset unless the flag is given. Library code never reads FLAGS.
"""

from __future__ import annotations

import dataclasses
import typing

from absl import flags

from recae_jax.config import PRESETS, Config, field_help, make_config


def define_config_flags(skip: tuple[str, ...] = ()) -> None:
  helps = field_help()
  hints = typing.get_type_hints(Config)
  flags.DEFINE_string("preset", None, "named configuration: " + ", ".join(sorted(PRESETS)))
  for f in dataclasses.fields(Config):
    if f.name in skip:
      continue
    default = f.default
    text = f"{helps.get(f.name, '')} (default: {default!r}, or the preset's)".strip()
    hint = hints[f.name]
    if hint is bool:
      flags.DEFINE_bool(f.name, None, text)
    elif hint is int:
      flags.DEFINE_integer(f.name, None, text)
    elif hint is float:
      flags.DEFINE_float(f.name, None, text)
    else:  # str, Optional[str], and comma-separated tuples
      flags.DEFINE_string(f.name, None, text)


def config_from_flags(**extra) -> Config:
  fv = flags.FLAGS
  overrides = {f.name: getattr(fv, f.name) for f in dataclasses.fields(Config)
               if f.name in fv and getattr(fv, f.name) is not None}
  overrides.update(extra)
  return make_config(fv.preset, **overrides)
