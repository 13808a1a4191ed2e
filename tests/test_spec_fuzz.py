"""Fuzzing the job spec loader: malformed specs are refused with field paths, never a traceback (no Ray).

Every generated spec is a mutation of a real spec (jobs/, bench/specs/, tests/k8s_specs/) that is
invalid by construction, so a spec that loads is a validation hole, not noise.
"""

from __future__ import annotations

import copy
import math
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from orchestrator.errors import SpecError
from orchestrator.spec import load_spec
from tests.conftest import ROOT, run_cli

SPEC_FILES = sorted([*ROOT.glob("jobs/*.yaml"), *ROOT.glob("bench/specs/*.yaml"), *ROOT.glob("tests/k8s_specs/*.yaml")])
BASES = [yaml.safe_load(p.read_text()) for p in SPEC_FILES]

# A problem line starts with a field path (`train.lr`, `model.channels[1]`, `tune.space.train.lr`,
# `train['a b']`) or names the file or YAML level, then says what is wrong.
FIELD_PATH = re.compile(r"^(\(top level\): |\(file\): |\(yaml\) |(?:[A-Za-z_][\w-]*|\[.+?\])(?:\.[\w-]+|\[.+?\])*: )\S")

REQUIRED = [
    ("name",),
    ("data",),
    ("data", "source"),
    ("data", "label"),
    ("data", "image", "column"),
    ("data", "image", "shape"),
    ("train", "early_stopping", "patience"),
    ("tune", "space"),
    ("model", "factory"),
]


def _free(path: tuple) -> bool:
    """Inside a part of the spec that takes any value: custom model kwargs, the values of a choice."""
    return path[:2] == ("model", "kwargs") or (path[:2] == ("tune", "space") and len(path) > 4 and path[3] in ("choice", "grid"))


def _nodes(node, path=()):
    """(path, value) of every node below the root, outside the free parts."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        p = (*path, k)
        if not _free(p):
            yield p, v
            yield from _nodes(v, p)


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_MISSING = object()


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return _MISSING
        d = d[k]
    return d


def _dump(d) -> bytes:
    return yaml.safe_dump(d, sort_keys=False, allow_unicode=True).encode()


# Each mutation: (random, a copy of a real spec) -> (file content, what was done). Invalid by construction.


def drop_required(rnd, d):
    path = rnd.choice([p for p in REQUIRED if _get(d, p) is not _MISSING] or [("name",)])
    node = d
    for k in path[:-1]:
        node = node[k]
    node.pop(path[-1], None)
    return _dump(d), f"drop {'.'.join(path)}"


def wrong_type(rnd, d):
    path, v = rnd.choice(list(_nodes(d)))
    if isinstance(v, bool):
        new = rnd.choice([7, "yes please", [1], {"a": 1}])
    elif _is_number(v):
        new = rnd.choice([True, False, "12", "x", [v], {"a": v}])
    elif isinstance(v, str):  # a number would be valid where "auto" stands
        new = rnd.choice([True, False, [v], {"a": v}] + ([] if v == "auto" else [3, 0.5]))
    else:  # a mapping or a list
        new = rnd.choice([True, 3, "x", [] if isinstance(v, dict) else {"a": 1}])
    _set(d, path, new)
    return _dump(d), f"{path} = {new!r} (was {v!r})"


def _numeric(d):
    return [p for p, v in _nodes(d) if _is_number(v)]


def non_finite(rnd, d):
    path = rnd.choice(_numeric(d))
    new = rnd.choice([math.nan, math.inf, -math.inf])
    _set(d, path, new)
    return _dump(d), f"{path} = {new}"


def huge_number(rnd, d):
    path = rnd.choice(_numeric(d))
    new = rnd.choice([10**30, -(10**30), 1e30, -1e300, 2**64, rnd.uniform(1e12, 1e18)])
    _set(d, path, new)
    return _dump(d), f"{path} = {new!r}"


def bool_as_number(rnd, d):
    path = rnd.choice(_numeric(d))
    new = rnd.choice([True, False])
    _set(d, path, new)
    return _dump(d), f"{path} = {new}"


def unknown_field(rnd, d):
    maps = [p for p, v in _nodes(d) if isinstance(v, dict) and p != ("model", "kwargs")]
    path = rnd.choice([(), *maps])
    key = rnd.choice(["zz_bogus", "Epochs", "lr ", "trian", "a b", "x\ny", "é"]) + str(rnd.randint(0, 99))
    node = _get(d, path) if path else d
    node[key] = rnd.choice([1, "x", None, [1], {"a": 1}])
    return _dump(d), f"{path} + unknown key {key!r}"


def deep_nesting(rnd, d):
    path, v = rnd.choice(list(_nodes(d)))
    depth = rnd.choice([1, 2, 5, 40, 500, 10_000])
    if depth > 40:  # deeper than yaml.safe_dump itself can write: a whole section as `a: [[[...`
        rest = _dump({k: x for k, x in d.items() if k != path[0]})
        return rest + f"{path[0]}: {'[' * depth}1{']' * depth}\n".encode(), f"{path[0]} nested {depth} deep"
    for _ in range(depth):
        v = [v]
    _set(d, path, v)
    return _dump(d), f"{path} nested {depth} deep"


def duplicate_key(rnd, d):
    lines = _dump(d).decode().splitlines(keepends=True)
    i = rnd.choice([i for i, line in enumerate(lines) if re.match(r"^ *[A-Za-z_][\w.]*:", line)])
    lines.insert(i + 1, lines[i])
    return "".join(lines).encode(), f"line {i + 1} twice: {lines[i].strip()!r}"


def random_bytes(rnd, d):
    junk = rnd.choice(
        [
            lambda: rnd.randbytes(rnd.randint(0, 400)),
            lambda: bytes(rnd.choice(b"{}[]:-,&*!|>'\"%@` \n\tab01") for _ in range(rnd.randint(1, 200))),
            lambda: _dump(d)[: rnd.randint(0, 40)] + rnd.randbytes(rnd.randint(1, 50)),
            lambda: b"",
            lambda: rnd.choice([b"- a\n- b\n", b"42\n", b"null\n", b"'just a string'\n", b"a: 1\n---\nb: 2\n"]),
        ]
    )()
    return junk, f"junk {junk[:60]!r}"


def impossible_gate(rnd, d):
    x = rnd.choice(["0.5", "1", "2", "1e9"])
    d["promote"] = rnd.choice(
        [
            f"accuracy >= {1 + float(x)}",
            "accuracy > 1",
            f"accuracy <= -{x}",
            "accuracy < 0",
            f"test_accuracy >= -{x}",
            f"loss < -{x}",
            "rmse < 0",
            f"mae <= -{x}",
            f"loss >= -{x}",
            "accuracy >= 1e999",
            "loss < inf",
            "rmse <= nan",
        ]
    )
    return _dump(d), f"promote {d['promote']!r}"


def wrong_task_metric(rnd, d):
    task = rnd.choice(["classification", "regression"])
    d["data"]["task"] = task
    metric = rnd.choice(["rmse", "mae"]) if task == "classification" else "accuracy"
    where = rnd.choice(["checkpoint", "promote"] + (["tune"] if d.get("tune") else []))
    if where == "promote":
        d["promote"] = f"{metric} {'<' if metric != 'accuracy' else '>='} 0.5"
    else:
        d[where] = {**(d.get(where) or {}), "metric": f"val_{metric}"}
    return _dump(d), f"data.task {task} with {where} {metric}"


def asha_beyond_epochs(rnd, d):
    epochs = (d.get("train") or {}).get("epochs", 10)
    d.setdefault("tune", {"space": {"train.lr": {"uniform": [0.001, 0.01]}}})
    key = rnd.choice(["grace_period", "max_epochs"])
    d["tune"]["scheduler"] = {"type": "asha", key: epochs + rnd.randint(1, 100)}
    return _dump(d), f"tune.scheduler.{key} above train.epochs {epochs}"


def duplicate_names(rnd, d):
    col = rnd.choice(["mean_radius", "label2", "x"])
    key = rnd.choice(["features", "categorical"])
    d["data"][key] = [col, "other", col] if rnd.random() < 0.5 else [col, col]
    if key == "categorical":
        d["data"]["features"] = [col, "other"]
    return _dump(d), f"data.{key} lists {col!r} twice"


MUTATIONS = [
    drop_required,
    wrong_type,
    non_finite,
    huge_number,
    bool_as_number,
    unknown_field,
    deep_nesting,
    duplicate_key,
    random_bytes,
    impossible_gate,
    wrong_task_metric,
    asha_beyond_epochs,
    duplicate_names,
]


def mutate(rnd: random.Random) -> tuple[str, bytes, str]:
    mutation = rnd.choice(MUTATIONS)
    content, what = mutation(rnd, copy.deepcopy(rnd.choice(BASES)))
    return mutation.__name__, content, what


def assert_refused(path: Path, what: str) -> None:
    with pytest.raises(SpecError) as info:  # any other exception fails the test with its traceback
        load_spec(path)
    e = info.value
    assert e.exit_code == 2 and e.problems, what
    for p in e.problems:
        assert FIELD_PATH.match(p) and "\n" not in p, f"{what}: problem line without a field path: {p!r}"


def test_base_specs_are_valid():
    assert len(BASES) >= 5
    for p in SPEC_FILES:
        load_spec(p)


def test_malformed_specs_are_refused_with_field_paths():
    seen: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"

        @settings(max_examples=500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(st.randoms(use_true_random=False))
        def check(rnd):
            kind, content, what = mutate(rnd)
            note(f"{kind}: {what}")
            path.write_bytes(content)
            assert_refused(path, f"{kind}: {what}")
            seen[kind] += 1

        check()
    assert sum(seen.values()) >= 500, seen
    assert set(seen) == {m.__name__ for m in MUTATIONS}, seen


def test_validate_cli_refuses_a_sample_with_field_paths_and_no_traceback(tmp_path):
    files = []
    for i in range(20):
        kind, content, _ = mutate(random.Random(i))
        files.append(tmp_path / f"{i:02d}-{kind}.yaml")
        files[-1].write_bytes(content)
    r = run_cli("validate", *map(str, files), timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not r.stdout.strip()
    lines = r.stderr.splitlines()
    assert sum(line.startswith("✗ ") for line in lines) == len(files), r.stderr
    for line in lines:
        assert line.startswith("✗ ") and line.endswith(": invalid job spec") or (line.startswith("    ") and FIELD_PATH.match(line[4:])), (
            line
        )
