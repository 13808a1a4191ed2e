"""What the README and docs/ show is what the code accepts: every `orchestrator` command in their
code blocks parses (its subcommand, options and arguments, as the CLI would parse them, without
running it), every command and option the README's table names exists, and every job-spec YAML
they show is a valid spec or, for a partial one, names only fields the spec has. No Ray here;
`python -m tests.doc_commands` runs the commands (about 20 minutes)."""

from __future__ import annotations

import re

import pytest
import typer
import yaml

from orchestrator.cli.main import app
from orchestrator.spec import JobSpec, parse_spec
from tests.conftest import JOBS, ROOT
from tests.doc_commands import BLOCK, DOCS, doc_commands, orchestrator_argv


def _blocks(langs) -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(ROOT)}", body) for doc in DOCS for lang, body in BLOCK.findall(doc.read_text()) if lang in langs]


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `orchestrator`) of each orchestrator command the docs show (doc_commands)."""
    found = []
    for c in doc_commands():
        for part in re.split(r"&&|;|\|(?!\|)", c.line):
            argv = orchestrator_argv(part)
            if argv is not None:
                found.append((f"{c.doc}: {part.strip()}", argv))
    return found


def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")  # (typer's own copy of click: no isinstance against the click package)


def _parse(argv: list[str]) -> None:
    """The CLI's own parsing of argv down to its command, without invoking it (the groups take no
    options but --help and --version, so each word up to a leaf command names a subcommand).
    Raises the CLI's usage errors (they have format_message)."""
    cmd = typer.main.get_command(app)
    ctx, args = cmd.context_class(cmd, info_name="orchestrator"), list(argv)
    while _is_group(cmd):
        assert args, f"{ctx.command_path}: a subcommand is missing"
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"{ctx.command_path}: no command {args[0]!r}"
        cmd, ctx, args = sub, sub.context_class(sub, info_name=args[0], parent=ctx), args[1:]
    assert not hasattr(cmd, "commands")
    cmd.make_context(ctx.info_name, args, parent=ctx.parent, resilient_parsing=False)


COMMANDS = _commands()


def test_the_docs_show_commands_of_every_group():
    shown = {argv[0] for _, argv in COMMANDS if argv}
    assert {"run", "serve", "predict", "evaluate", "submit", "jobs", "cluster", "k8s"} <= shown, shown


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_each_command_in_the_docs_parses(where, argv):
    try:
        _parse(argv)
    except Exception as e:
        if not hasattr(e, "format_message"):  # not a usage error of the CLI's
            raise
        if type(e).__name__ == "BadParameter" and "does not exist" in e.format_message():
            return  # a placeholder where a path must exist: still a valid command
        raise AssertionError(f"{where}: {type(e).__name__}: {e.format_message()}") from None


def test_the_command_check_catches_what_it_is_for():
    for argv, error in (
        (["run", "a.yaml", "--no-such-option"], "NoSuchOption"),
        (["jobs", "stop"], "MissingParameter"),
        (["serve", "a", "b", "c"], "UsageError"),
    ):
        with pytest.raises(Exception) as e:
            _parse(argv)
        assert type(e.value).__name__ == error, (argv, e.value)
    with pytest.raises(AssertionError, match="no command 'nope'"):
        _parse(["cluster", "nope"])


def _table_synopses() -> list[tuple[list[str], list[str]]]:
    """(command path, options named) of each row of the README's command table."""
    rows = []
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| `orchestrator ([^`]+)` \|", line)
        if not m:
            continue
        words = m.group(1).replace("\\|", "|").split()
        path = []
        for w in words:
            if w.startswith(("[", "-")) or w.isupper() or w.rstrip(".").isupper():
                break
            path.append(w.split("|"))
        options = re.findall(r"(--?[a-z][a-z0-9-]*)", m.group(1))
        rows.append((path, options))
    return rows


def test_every_command_and_option_in_the_readme_table_exists():
    rows = _table_synopses()
    assert len(rows) >= 15
    root = typer.main.get_command(app)
    for path, options in rows:
        # each alternative of each word (`up|down|status`) is a command; the options belong to the last
        level = [root]
        for alternatives in path:
            found = [c.commands.get(a) for c in level for a in alternatives if _is_group(c)]
            assert found and None not in found, f"README table: no command {' '.join('|'.join(a) for a in path)}"
            level = found
        names = {n for cmd in level for p in cmd.params for n in (*p.opts, *p.secondary_opts)}
        for opt in options:  # `list|status|logs [--follow]|stop`: an option of one of the alternatives
            assert opt in names, f"README table: {' '.join('|'.join(a) for a in path)} has no option {opt}"


# ------------------------------------------------------------------------------ job specs


def _spec_blocks() -> list[tuple[str, dict]]:
    out = []
    for where, body in _blocks(("yaml",)):
        d = yaml.safe_load(body)
        if isinstance(d, dict) and "apiVersion" not in d:  # Kubernetes objects are checked elsewhere
            out.append((where, d))
    return out


SPEC_BLOCKS = _spec_blocks()


def _unknown_fields(value, schema: dict, defs: dict, path: str) -> list[str]:
    """Field names in `value` that the JSON Schema `schema` has no property for (values not checked)."""
    if "$ref" in schema:
        return _unknown_fields(value, defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
    options = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
    if options:  # the option that fits best, of those that can hold a mapping
        results = [
            _unknown_fields(value, s, defs, path) for s in options if not isinstance(value, dict) or s.get("type") in (None, "object")
        ]
        return min(results, key=len, default=[])
    if not isinstance(value, dict) or schema.get("type") not in (None, "object"):
        return []
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True if not props else False)
    unknown = []
    for k, v in value.items():
        if k in props:
            unknown += _unknown_fields(v, props[k], defs, f"{path}.{k}" if path else k)
        elif isinstance(extra, dict):
            unknown += _unknown_fields(v, extra, defs, f"{path}.{k}" if path else k)
        elif not extra:
            unknown.append(f"{path}.{k}" if path else k)
    return unknown


def test_the_docs_show_job_specs():
    assert len(SPEC_BLOCKS) >= 8


@pytest.mark.parametrize("where,block", SPEC_BLOCKS, ids=[f"{w}-{i}" for i, (w, _) in enumerate(SPEC_BLOCKS)])
def test_each_job_spec_in_the_docs_names_only_fields_the_spec_has(where, block):
    schema = JobSpec.model_json_schema()
    unknown = _unknown_fields(block, schema, schema.get("$defs", {}), "")
    assert not unknown, f"{where}: no such spec field {', '.join(unknown)}"


@pytest.mark.parametrize(
    "where,block",
    [(w, b) for w, b in SPEC_BLOCKS if {"data", "model"} <= set(b)],
    ids=[w for w, b in SPEC_BLOCKS if {"data", "model"} <= set(b)],
)
def test_each_data_and_model_pair_in_the_docs_is_a_valid_spec(where, block, tmp_path):
    """A block with a data and a model section, on the breast-cancer job's other sections."""
    d = yaml.safe_load((JOBS / "breast-cancer-mlp.yaml").read_text())
    d.update(block)
    if "tune" in d and block.get("tune") is None:
        d.pop("tune")
    parse_spec(d, base_dir=tmp_path)


def test_the_field_check_catches_a_misspelled_field():
    schema = JobSpec.model_json_schema()
    defs = schema.get("$defs", {})
    assert _unknown_fields({"train": {"epoch": 3}}, schema, defs, "") == ["train.epoch"]
    assert _unknown_fields({"data": {"image": {"colum": "x"}}, "model": {"arch": "cnn", "chanels": [8]}}, schema, defs, "") == [
        "data.image.colum",
        "model.chanels",
    ]
    assert _unknown_fields({"tune": {"space": {"train.lr": {"loguniform": [0.1, 1]}}}}, schema, defs, "") == []
