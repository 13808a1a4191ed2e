"""Runs every command shown in README.md and docs/*.md, in order, and fails on a non-zero exit.

    .venv/bin/python -m tests.doc_commands            # all but the long ones (about 20 minutes on 2 cores)
    .venv/bin/python -m tests.doc_commands --long     # also the benchmarks and the full test suite
    .venv/bin/python -m tests.doc_commands --only serving,clusters

Each page's commands run in a scratch folder of their own holding copies of jobs/ and cluster/
(the tests and benchmarks they show run in the repository), with what the docs leave to the reader
filled in: the example files a command reads (rows.csv, incoming/, labelled.csv) are written from
the breast-cancer data first, a run name or submission id shown in an example is the one the page's
earlier command produced, `[--option]` is left out, and `...` is a value. `orchestrator serve` runs
in the background until it answers /healthz and is stopped (Ctrl-C) when its page is done.

Skipped, each with its reason in the summary: what needs Kubernetes (docs/kubernetes.md but for its
`--dry-run` and `render` commands), what needs a remote machine reached over SSH (`ray up`), and,
without --long, the benchmarks and the whole test suite (minutes each, the suite most of an hour).
The test of the docs that runs in CI (tests/test_docs.py) only parses the commands, which this
module also lists (`doc_commands()`)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
SHELL = ("bash", "sh", "console")


@dataclass
class DocCommand:
    doc: str  # README.md, docs/serving.md...
    line: str  # as shown, without its trailing comment (and without the `$ ` of a console block)


def doc_commands() -> list[DocCommand]:
    """Each command line of the docs' shell blocks, in order: a line of a bash/sh block, or a `$ `
    line of a console block (its other lines are output). Backslash continuations are joined."""
    found = []
    for doc in DOCS:
        for lang, body in BLOCK.findall(doc.read_text()):
            if lang not in SHELL:
                continue
            console = any(line.startswith("$ ") for line in body.splitlines())
            for line in body.replace("\\\n", " ").splitlines():
                if console:
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                line = re.sub(r"\s#\s.*$", "", line).strip()
                if line and not line.startswith("#"):
                    found.append(DocCommand(str(doc.relative_to(ROOT)), re.sub(r"\s+", " ", line)))
    return found


def orchestrator_argv(command: str) -> Optional[list[str]]:
    """The arguments after `orchestrator` of a command (one part of a `&&`/`|` chain), if it runs it."""
    if not re.search(r"(^|[\s/])orchestrator\s", command):
        return None
    words = shlex.split(command.replace("[", " ").replace("]", " "))
    if "--" in words:  # `ray job submit ... -- orchestrator run ...`
        words = words[words.index("--") + 1 :]
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
        words = words[1:]
    return words[1:] if words and words[0].endswith("orchestrator") else None


# ------------------------------------------------------------------------------ what runs, and how

KUBERNETES = ("kubectl", "kind", "helm", "docker")
REMOTE = "needs a remote Ray cluster reached over SSH (`ray up cluster/remote-example.yaml`)"
LONG = "a benchmark or the whole test suite: minutes to the better part of an hour (--long runs it)"


def skip_reason(c: DocCommand, long: bool) -> Optional[str]:
    words = c.line.split()
    if c.doc == "docs/kubernetes.md":
        runs_here = words[0] == "orchestrator" and ("--dry-run" in words or words[1] == "k8s")
        return None if runs_here else "needs Kubernetes"
    if words[0] in KUBERNETES:
        return "needs Kubernetes"
    if c.doc == "docs/clusters.md" and ("remote" in c.line or ":8265" in c.line and "--dry-run" not in c.line):
        return REMOTE
    if not long and (c.line.endswith(".venv/bin/pytest") or "python -m bench" in c.line and "--quick" not in c.line or "bench/" in c.line):
        return LONG
    return None


def _rows_files(folder: Path) -> None:
    """The example inputs docs/serving.md's commands read, from the breast-cancer data."""
    from orchestrator.data.bundled import bundled_frame

    frame = bundled_frame("sklearn:breast_cancer")
    x = frame.drop(columns="label")
    x.head(5).to_csv(folder / "rows.csv", index=False)
    x.head(5).to_parquet(folder / "rows.parquet")
    x.head(5).to_json(folder / "rows.jsonl", orient="records", lines=True)
    x.head(5).to_parquet(folder / "new-rows.parquet")
    (folder / "incoming").mkdir(exist_ok=True)
    x.iloc[:50].to_parquet(folder / "incoming" / "a.parquet")
    x.iloc[50:90].to_parquet(folder / "incoming" / "b.parquet")
    frame.iloc[:100].to_csv(folder / "labelled.csv", index=False)


class Page:
    """One page's commands in its scratch folder: placeholders filled from what ran before."""

    def __init__(self, doc: str, work: Path, env: dict):
        self.doc, self.work, self.env = doc, work, env
        self.servers: list[subprocess.Popen] = []
        self.values: dict[str, str] = {}  # placeholder as shown -> value

    def fill(self, line: str) -> str:
        line = re.sub(r"\s*\[[^\]]*\]", "", line)  # `[--follow]`: optional, left out
        line = line.split(" | kubectl")[0]  # `render ... | kubectl apply -f -`: the manifests alone
        line = line.replace("=...", "=doc-check")
        for shown, value in self.values.items():
            line = line.replace(shown, value)
        return line.replace(".venv/bin/", f"{ROOT}/.venv/bin/")

    def learn(self, c: DocCommand, stdout: str) -> None:
        """Values later commands of the page refer to by an example."""
        argv = orchestrator_argv(c.line) or []
        if argv[:1] == ["run"] and "--run-name" in argv:
            self.values["runs/digits-cnn-20261207-101500"] = f"runs/{argv[argv.index('--run-name') + 1]}"
        if argv[:1] == ["submit"] and "--dry-run" not in argv and stdout.strip():
            sid = stdout.strip().splitlines()[0].strip()
            self.values.update({"digits-cnn-20261123-102006-3087": sid, " ID": f" {sid}"})

    def serve(self, line: str, argv: list[str], log: Path) -> int:
        port = argv[argv.index("--port") + 1] if "--port" in argv else "8000"
        proc = subprocess.Popen(
            line, shell=True, cwd=self.work, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=self.env
        )
        self.servers.append(proc)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return 0
            except OSError:
                time.sleep(1)
        return proc.poll() or 1

    def stop_servers(self) -> list[int]:
        codes = []
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the docs stop it
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            codes.append(proc.returncode)
        return codes


def run(long: bool, only: Optional[set[str]], keep: bool) -> int:
    exe = ROOT / ".venv" / "bin" / "orchestrator"
    scratch = Path(tempfile.mkdtemp(prefix="doc-commands-"))
    results: list[tuple[str, str, str, float]] = []  # doc, command, outcome, seconds
    pages: dict[str, Page] = {}
    env = {**os.environ, "COLUMNS": "160", "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv, activated
    # a page's teardown (`cluster local down`, shown beside `up`) runs after the page's other commands
    listed = sorted(
        doc_commands(), key=lambda c: (DOCS.index(ROOT / c.doc), (orchestrator_argv(c.line) or [])[:3] == ["cluster", "local", "down"])
    )
    for c in listed:
        name = Path(c.doc).stem.lower()
        if only and name not in only:
            continue
        reason = skip_reason(c, long)
        if reason:
            results.append((c.doc, c.line, f"skipped: {reason}", 0.0))
            continue
        page = pages.get(c.doc)
        if page is None:
            work = scratch / name
            work.mkdir()
            for folder in ("jobs", "cluster"):
                shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("data"))
            if c.doc == "docs/serving.md":
                _rows_files(work)
            page = pages[c.doc] = Page(c.doc, work, env)
        line = page.fill(c.line)
        argv = orchestrator_argv(c.line) or []
        in_repo = "pytest" in line or "bench" in line  # the tests and benchmarks run where they live
        log = scratch / f"{len(results):03d}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {c.doc}: {c.line}", flush=True)
        t0 = time.monotonic()
        if argv[:1] == ["serve"]:
            rc = page.serve(line, argv, log)
        elif c.line.startswith("python3 -m venv"):  # the README's quickstart: in a fresh copy of the repository
            clone = scratch / "readme-clone"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            p = subprocess.run(
                c.line,
                shell=True,
                cwd=clone,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                timeout=1800,
                env={k: v for k, v in env.items() if k != "PATH"} | {"PATH": os.environ.get("PATH", "")},
            )
            rc = p.returncode
        else:
            p = subprocess.run(line, shell=True, cwd=ROOT if in_repo else page.work, capture_output=True, text=True, timeout=1800, env=env)
            rc = p.returncode
            log.write_text(p.stdout + p.stderr)
            page.learn(c, p.stdout)
        results.append((c.doc, c.line, "ok" if rc == 0 else f"FAILED (exit {rc}; output in {log})", time.monotonic() - t0))
        if rc != 0:
            print(log.read_text()[-3000:], flush=True)
    for page in pages.values():
        for code in page.stop_servers():
            if code not in (0, 130, -signal.SIGINT):
                results.append((page.doc, "orchestrator serve (stopped with Ctrl-C)", f"FAILED (exit {code})", 0.0))

    failed = [r for r in results if r[2].startswith("FAILED")]
    ran = [r for r in results if not r[2].startswith("skipped")]
    print()
    for doc, line, outcome, seconds in results:
        print(f"{outcome[:60]:<60} {seconds:6.0f} s  {doc}: {line[:110]}")
    print(
        f"\n{len(ran)} commands run, {len(failed)} failed, {len(results) - len(ran)} skipped; scratch folder {scratch}"
        + ("" if keep or failed else " (removed)")
    )
    if not keep and not failed:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.doc_commands", description=__doc__.split("\n\n")[0])
    ap.add_argument("--long", action="store_true", help="also the benchmark suites and the full test suite")
    ap.add_argument("--only", help="comma-separated pages: readme, serving, clusters, kubernetes, ...")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args(argv)
    return run(a.long, set(a.only.split(",")) if a.only else None, a.keep)


if __name__ == "__main__":
    sys.exit(main())
