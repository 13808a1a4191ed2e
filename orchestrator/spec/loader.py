"""Reading a spec file: a hardened YAML loader, then validation and the cross-field checks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import ValidationError

from orchestrator.errors import SpecError, one_line
from orchestrator.spec.checks import check_search_space, spec_problems
from orchestrator.spec.errors import format_validation_error
from orchestrator.spec.job import JobSpec


def parse_spec(data: Any, *, source: str = "<spec>", base_dir: Optional[Path] = None) -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(source, [f"(top level): expected a mapping of fields, got {type(data).__name__}"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(source, format_validation_error(err)) from None
    problems = spec_problems(spec) or check_search_space(spec)
    if problems:
        raise SpecError(source, problems)
    spec._base_dir = (base_dir or Path(".")).resolve()
    return spec


MAX_SPEC_BYTES = 1 << 20  # a job spec is a few KiB; a bound keeps `validate` fast on any file
MAX_YAML_DEPTH = 32  # real specs nest about 7 deep; PyYAML's composer recurses once per level
MAX_YAML_NODES = 100_000  # after expanding aliases: an alias bomb must not reach the validator


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would keep the last silently), nesting deeper
    than MAX_YAML_DEPTH (before PyYAML's recursion can fail) and alias bombs."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []
        self._aliases = False

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = True
        if isinstance(index, yaml.ScalarNode):
            part = index.value
        elif isinstance(index, int):
            part = f"[{index}]"
        else:
            part = "(key)" if parent is not None else ""
        if len(self._path) >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_YAML_DEPTH} levels (at {_join_path(self._path)})",
                self.peek_event().start_mark,
            )
        self._path.append(part)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple, yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                first = seen.setdefault((key.tag, key.value), key)
                if first is not key:
                    raise _DuplicateKey(_join_path([*self._path, key.value]), key.start_mark.line + 1, first.start_mark.line + 1)
        return node

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and self._aliases:
            _expanded_size(node, {}, set())
        return node


# YAML 1.1 (PyYAML) reads `1e-3` as a string; YAML 1.2 and people read it as a number. With strict
# number fields the string would be refused, so exponent floats without a dot are floats here.
_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


class _DuplicateKey(Exception):
    def __init__(self, path: str, line: int, first_line: int):
        self.path, self.line, self.first_line = path, line, first_line


def _join_path(parts: list[str]) -> str:
    return "".join(p if p.startswith("[") or i <= 1 else "." + p for i, p in enumerate(parts)) or "(top level)"


def _expanded_size(node: yaml.Node, memo: dict, active: set, level: int = 1) -> int:
    """Values the document holds with every alias expanded. Refuses cycles, more than MAX_YAML_NODES
    values and (aliases inside aliased collections) nesting deeper than MAX_YAML_DEPTH."""
    if id(node) not in memo:
        if id(node) in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the collection that contains it", node.start_mark)
        active.add(id(node))
        children = (
            [n for kv in node.value for n in kv]
            if isinstance(node, yaml.MappingNode)
            else node.value
            if isinstance(node, yaml.SequenceNode)
            else []
        )
        if children and level >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded", node.start_mark
            )
        size = 1 + sum(_expanded_size(n, memo, active, level + 1) for n in children)
        height = 1 + max((memo[id(n)][1] for n in children), default=0)
        active.discard(id(node))
        memo[id(node)] = (size, height)
    size, height = memo[id(node)]
    if size > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} values once aliases are expanded", node.start_mark)
    if level + height - 1 > MAX_YAML_DEPTH:
        raise yaml.composer.ComposerError(
            None, None, f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded", node.start_mark
        )
    return size


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.reader.ReaderError):
        code = e.character if isinstance(e.character, int) else ord(e.character)
        return f"(yaml) character {e.position + 1}: unacceptable character #x{code:04x}: {e.reason}"
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context, problem = getattr(e, "context", None), getattr(e, "problem", None)
    return f"(yaml) {where}{' '.join(filter(None, [context, problem])) or e}"


def read_spec_yaml(path: str | Path) -> Any:
    """The parsed YAML of a spec file; any unreadable or malformed file is a SpecError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # read at most one byte too many: the file may be /dev/zero
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(path), ["(file): file not found"]) from None
    except OSError as e:
        raise SpecError(str(path), [one_line(f"(file): cannot read: {e.__class__.__name__}: {e.strerror or e}")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"(file): larger than {MAX_SPEC_BYTES // 1024} KiB; a job spec is a small YAML file"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(str(path), [f"(file): not UTF-8 text (byte {e.start + 1}); a job spec is a YAML file"]) from None
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise SpecError(str(path), [one_line(f"{e.path}: duplicate key (line {e.line}; first given on line {e.first_line})")]) from None
    except yaml.YAMLError as e:
        raise SpecError(str(path), [one_line(_yaml_problem(e))]) from None
    except RecursionError:  # not expected with the depth bound; never a traceback all the same
        raise SpecError(str(path), [f"(yaml) nested too deep (at most {MAX_YAML_DEPTH} levels)"]) from None


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    return parse_spec(read_spec_yaml(path), source=str(path), base_dir=path.parent)


def json_schema() -> dict:
    schema = JobSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestrator job spec"
    return schema
