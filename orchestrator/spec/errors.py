"""A validation error as one line per problem, each led by the field's path (`model.hidden[0]: ...`)."""

from __future__ import annotations

import re
import reprlib
from typing import Any, Sequence

from pydantic import ValidationError

from orchestrator.errors import one_line


def union_tags() -> set[tuple[str, str]]:
    """(field, tag) of the spec's tagged unions: pydantic puts the tag in an error's loc."""
    from orchestrator.spec.model import ARCHITECTURES

    return {("model", tag) for tag in ARCHITECTURES} | {("scheduler", "asha"), ("scheduler", "none")}


def loc_path(loc: tuple, *, quote: bool = True, empty: str = "(top level)", tags: frozenset | set = frozenset()) -> str:
    """('model', 'cnn', 'channels', 0) -> 'model.channels[0]': the one way a field is named in an error,
    in the spec and in a request to a served model. A (field, tag) pair of `tags` is a union's tag,
    not a field, and is left out. With `quote`, a key that is not a plain name (spaces, newlines, a
    number) is quoted: `train['a b']`."""
    out = ""
    for i, part in enumerate(loc):
        if type(part) is int:
            out += f"[{part}]"
        elif len(loc) > i + 1 and i > 0 and (loc[i - 1], part) in tags:
            continue
        elif quote and not re.fullmatch(r"[A-Za-z_][\w.-]*", str(part)):
            out += f"[{yaml_scalar(part)}]"
        else:
            out += ("." if out else "") + str(part)
    return out or empty


def spec_path(loc: tuple) -> str:
    return loc_path(loc, tags=union_tags())


MAX_PROBLEMS = 50


def yaml_scalar(v: Any) -> str:
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return reprlib.repr(v)


# pydantic's name for a member of a plain union (`float`, `literal['auto']`), the last part of its loc
_UNION_MEMBER = re.compile(r"^((constrained-)?(float|int)|literal\[.*\]|function-\w+\[.*\])$")


def _merge_union_errors(errors: Sequence[Any]) -> list[dict]:
    """`x: number or 'auto'` fails as one error per union member; report them as one line for `x`."""
    out: list[dict] = []
    for e in errors:
        loc = tuple(e["loc"])
        if loc and isinstance(loc[-1], str) and _UNION_MEMBER.match(loc[-1]) and e["type"] not in ("extra_forbidden", "missing"):
            e = {**e, "loc": loc[:-1]}
            if out and tuple(out[-1]["loc"]) == e["loc"] and out[-1].get("union"):
                out[-1]["msg"] += " or " + e["msg"].removeprefix("Input should be ")
                continue
            e["union"] = True
        out.append(e)
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    lines = []
    for e in _merge_union_errors(err.errors(include_url=False)):
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `orchestrator schema` lists every field)"
        elif e["type"] == "union_tag_invalid":
            ctx = e.get("ctx", {})
            msg = f"unknown {ctx.get('discriminator', 'type')} {ctx.get('tag')}; expected one of {ctx.get('expected_tags')}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] != "value_error" and isinstance(e.get("input"), (bool, int, float, str, type(None))):
            msg += f", got {yaml_scalar(e['input'])}"  # e.g. `got true` where a number belongs
        path = spec_path(tuple(e["loc"]))
        if e["type"] == "invalid_key":  # pydantic turns the key into an index or a string; name it as written
            path = (spec_path(tuple(e["loc"])[:-1]) if len(e["loc"]) > 1 else "") + f"[{yaml_scalar(e['input'])}]"
        lines.append(one_line(f"{path}: {msg}"))
    if len(lines) > MAX_PROBLEMS:  # e.g. a file of 10,000 unknown keys
        lines = lines[:MAX_PROBLEMS] + [f"(top level): and {len(lines) - MAX_PROBLEMS} more problems"]
    return lines
