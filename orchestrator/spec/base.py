"""What every section of the spec shares: strict models that forbid unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$"
IMPORT_PATH_RE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


# Strict: YAML `true` is not the number 1, `1.0e30` is not an integer and "10" is not a number
# (ints are still accepted where a float is expected). Numbers must be finite.
class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
