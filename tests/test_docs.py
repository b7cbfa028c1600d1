"""Docs that run: every python block and every ``ies ...`` command in README.md and docs/*.md.

* Python blocks run in order, one namespace per page, seeded with the tiny loop that docs/usage.md
  starts from (``train_set``, ``model``, ``opt``, ``loss_fn``, ``epochs``, ...), in a temporary folder.
* A block whose fence is preceded by ``<!-- output -->`` is what the python block before it prints:
  the test compares the two exactly.
* ``ies ...`` commands, in shell blocks and in inline code, run in-process through ``ies.cli.main``
  at a tiny size (few epochs, 200 samples, one seed, a temporary ``--out``); a command ending in
  ``; echo "exit $?"`` is a documented error probe and must exit 2 with a one-line error. Commands
  with placeholders (``RUN_DIR``, ``...``) are templates: only their subcommand is checked.
* ``<!-- not-run: REASON -->`` before a fence skips that block, with the reason in the test report.
* Docstring examples (``>>>``) of the library run as doctests (``test_docstring_examples``).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
import shlex
import subprocess
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\s*$")
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
INLINE = re.compile(r"`((?:\.venv/bin/)?ies [a-z][^`]*)`")
PLACEHOLDER = re.compile(r"(^|[,:=])[A-Z][A-Z_]*(\.\.\.)?($|[,:])|\.\.\.")  # R, RUN_DIR, none,NAME, ...


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    note: str  # the line before the fence when it is an HTML comment, else ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def not_run(self) -> Optional[str]:
        m = NOT_RUN.search(self.note)
        return m.group(1) if m else None


def blocks(path: Path) -> List[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = len(m.group(1)), m.group(2), i
        j = i + 1
        while j < len(lines) and not re.match(rf"^ {{{indent}}}```\s*$", lines[j]):
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        code = textwrap.dedent("\n".join(lines[start + 1:j]))
        out.append(Block(path, start + 1, lang, code, prev if prev.startswith("<!--") else ""))
        i = j + 1
    return out


def ies_commands(path: Path) -> List[Block]:
    """Every ``ies`` command of a page: lines of its shell blocks, and inline code spans."""
    found: List[Block] = []
    for b in blocks(path):
        if b.lang not in ("", "bash", "sh", "shell"):
            continue
        for k, ln in enumerate(b.code.splitlines()):
            cmd = re.search(r"(?:^|&& |; )((?:\.venv/bin/)?ies [a-z].*)$", ln)
            if cmd:
                found.append(Block(path, b.line + 1 + k, "ies", cmd.group(1), b.note))
    in_fence = False
    for n, ln in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(ln):
            in_fence = not in_fence
        elif not in_fence:
            found += [Block(path, n, "ies", m.group(1), "") for m in INLINE.finditer(ln)]
    return found


# ----------------------------------------------------------------------------- python blocks
def base_namespace() -> Dict[str, object]:
    """The loop docs/usage.md starts from, at its own tiny size (512 samples of 8 features)."""
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    import ies

    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    return {"torch": torch, "nn": nn, "F": F, "DataLoader": DataLoader, "TensorDataset": TensorDataset, "ies": ies,
            "x": x, "y": y, "train_set": TensorDataset(x, y), "model": model, "epochs": 20,
            "opt": torch.optim.SGD(model.parameters(), lr=0.1), "loss_fn": nn.CrossEntropyLoss(reduction="none")}


PAGES_WITH_PYTHON = [p for p in DOCS if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests").symlink_to(ROOT / "tests")  # docs/architecture.md imports tests/test_layers.py
    monkeypatch.syspath_prepend(str(tmp_path))
    scope = base_namespace()
    printed, ran, skipped = "", 0, []
    for b in blocks(page):
        if b.note.startswith("<!-- output"):
            assert b.code.strip() == printed.strip(), f"{b.where}: the block above prints\n{printed}"
            continue
        if b.lang != "python":
            continue
        if b.not_run:
            skipped.append(f"{b.where}: {b.not_run}")
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", FutureWarning)
            try:
                exec(compile(b.code, b.where, "exec"), scope)
            except Exception as e:  # name the block
                raise AssertionError(f"{b.where} fails: {type(e).__name__}: {e}\n{b.code}") from e
        _check_warnings(b, caught)
        printed, ran = out.getvalue(), ran + 1
    assert ran > 0, f"{page.name}: every python block is marked not-run: {skipped}"


# A snippet is a fragment of a loop: the IESWarnings it may raise are the documented ones (docs/usage.md's table).
DOCUMENTED_WARNINGS = ("samples were active but no training loss was recorded", "saved with other rule settings",
                       "recorded losses are not finite")


def _check_warnings(b: Block, caught) -> None:
    usage = (ROOT / "docs" / "usage.md").read_text()
    for w in caught:
        from ies import IESWarning

        if not issubclass(w.category, IESWarning):
            continue  # the frameworks' own (Lightning's hints, transformers' notices)
        msg = str(w.message)
        phrase = next((p for p in DOCUMENTED_WARNINGS if p in msg), None)
        assert phrase and phrase in usage, f"{b.where}: undocumented IESWarning: {msg}"


def test_not_run_marks_give_a_reason():
    for page in DOCS:
        for b in blocks(page):
            if "not-run" in b.note:
                assert b.not_run and len(b.not_run) > 8, f"{b.where}: say why the block cannot run"


# ----------------------------------------------------------------------------- ies commands
def _tiny(argv: List[str], out: Path) -> List[str]:
    """The command at a tiny size: the flags its subcommand accepts, appended (argparse keeps the last)."""
    from ies.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[argv[0]]  # argparse's own table
    flags = {s for a in sub._actions for s in a.option_strings}
    epochs = "20" if any("target_saving" in a for a in argv) else "3"  # a target needs epochs after the first judgement
    tiny = {"--epochs": epochs, "--train-size": "100", "--seeds": "1", "--out": str(out), "--orders": "2",
            "--scale": "1", "--fractions": "0.3"}
    extra = [x for k, v in tiny.items() if k in flags for x in (k, v)]
    return argv + extra + (["--quiet"] if "--quiet" in flags else [])


def _documented_commands() -> List[Block]:
    """Each distinct command once (its first place), quoted messages (``ies train: error ...``) left out."""
    from ies.cli import COMMANDS as SUBCOMMANDS

    seen, out = set(), []
    for c in (c for p in DOCS for c in ies_commands(p) if not c.not_run):
        words = c.code.split()
        sub = words[1] if len(words) > 1 else ""
        if not all(part in SUBCOMMANDS for part in sub.split("/")):  # "train:" (a message), "epoch 1/2" (a log)
            continue
        key = c.code.split("  #")[0].split(" # ")[0].strip().replace(".venv/bin/", "")
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


COMMANDS = _documented_commands()


def test_the_docs_hold_ies_commands():
    assert len(COMMANDS) > 10 and any(c.path.name == "README.md" for c in COMMANDS)


def _expected_status(cmd: Block) -> Optional[int]:
    """An error probe's documented exit status: ``; echo "exit $?"`` (2), or "exit N" before it on its line."""
    if re.search(r';\s*echo "exit \$\?"\s*$', cmd.code):
        return 2
    if cmd.lang == "ies" and cmd.note == "":
        text = cmd.path.read_text().splitlines()[cmd.line - 1]
        said = re.findall(r"\bexit (\d)\b", text[:text.find(cmd.code)])
        return int(said[-1]) if said else None
    return None


@pytest.mark.slow  # about 30 short runs of the CLI
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: f"{c.where} {c.code[:40]}")
def test_ies_commands_run_at_a_tiny_size(cmd, tmp_path, monkeypatch, capsys):
    from ies.cli import COMMANDS as SUBCOMMANDS
    from ies.cli import main

    argv = _argv(cmd)
    if "/" in argv[0] or any(PLACEHOLDER.search(t) for t in argv) or _needs_arguments(argv):
        # a template (RUN_DIR, NAME, compare/tradeoff/budget) or a bare mention of a command that takes
        # run folders (`ies report`): the subcommands must exist
        assert all(part in SUBCOMMANDS for part in argv[0].split("/")), cmd.where
        return
    if _parse_only(argv):  # the flags must still parse
        from ies.cli import build_parser

        build_parser().parse_args(argv)
        return
    monkeypatch.chdir(tmp_path)
    _prepare(cmd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(_tiny(argv, tmp_path / "out"))
    _check_warnings(cmd, caught)
    err = capsys.readouterr().err
    expected = _expected_status(cmd)
    if expected:  # a documented error probe: one line naming the problem, the documented status
        assert rc == expected and len(err.strip().splitlines()) == 1, (cmd.where, rc, err)
    else:
        assert rc == 0, (cmd.where, err[-2000:])


def _argv(cmd: Block) -> List[str]:
    line = cmd.code.split("  #")[0].split(" # ")[0].strip()
    return shlex.split(re.sub(r';\s*echo "exit \$\?"\s*$', "", line))[1:]


def _parse_only(argv: List[str]) -> Optional[str]:
    """Why a command is parsed but not run here, or None."""
    if "--resume" in argv:
        return "it continues a run folder made by an earlier command"
    if "--data-dir" in argv:
        return "it reads dataset files this machine does not have"
    if "fashion-mnist" in argv:
        return "Fashion-MNIST's 10,000-image test set takes minutes per run here; tests/experiments load it"
    return None


def test_commands_parsed_not_run_say_why():
    parsed = [c for c in COMMANDS if _parse_only(_argv(c))]
    assert all(_parse_only(_argv(c)) for c in parsed) and len(parsed) < len(COMMANDS) // 3


def _needs_arguments(argv: List[str]) -> bool:
    from ies.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[argv[0]]
    required = [a for a in sub._actions if not a.option_strings and a.nargs not in ("?", "*")]
    return bool(required) and len(argv) == 1


def _prepare(cmd: Block) -> None:
    """Run the block's ``echo ... > FILE`` lines (the files a documented probe reads)."""
    for b in blocks(cmd.path):
        if b.line < cmd.line < b.line + 1 + len(b.code.splitlines()):
            for ln in b.code.splitlines():
                if re.match(r"^echo .* > \S+$", ln):
                    subprocess.run(["bash", "-c", ln], check=True)


# ----------------------------------------------------------------------------- docstrings
def _library_modules() -> List[str]:
    import ies

    names = []
    for info in pkgutil.walk_packages(ies.__path__, "ies."):
        if info.name.startswith("ies.cli") or info.name == "ies.__main__":
            continue
        names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _library_modules())
def test_docstring_examples(name, tmp_path, monkeypatch):
    """``>>>`` examples run; one that needs a framework's full setup says ``# doctest: +SKIP`` and why."""
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)  # the extras are part of [dev]
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {**doctest_namespace(), **vars(module)}
    report: List[str] = []
    for test in finder.find(module, name, globs=dict(globs)):
        if not test.examples or _imported(test, module):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.run(test, out=report.append)
    assert runner.failures == 0, f"{name}: {runner.failures} docstring example(s) fail:\n" + "".join(report)[-4000:]


def doctest_namespace() -> Dict[str, object]:
    """What the library's examples take as given: the usage.md loop's names, a tracker, its loader."""
    from torch.utils.data import DataLoader

    import ies

    scope = base_namespace()
    tracker = ies.IES(512)
    sampler = tracker.sampler()
    loader = DataLoader(ies.IndexedDataset(scope["train_set"]), sampler=sampler, batch_size=64)
    scope.update(IndexedDataset=ies.IndexedDataset, IES=ies.IES, tracker=tracker, sampler=sampler, loader=loader,
                 batch_size=64, accum=2, batch=next(iter(loader)), idx=torch.arange(512),
                 S=100, step_lambda=lambda step: 1.0 - step / 100)
    return scope


def _imported(test: doctest.DocTest, module) -> bool:
    """A doctest of an object defined in another module (found through an import) is that module's."""
    return bool(test.filename) and Path(test.filename).resolve() != Path(module.__file__).resolve()


# ----------------------------------------------------------------------------- quoted figures
QUOTE = re.compile(r"`((?:\.venv/bin/)?ies [a-z][^`]*)`\s+(?:reported|stops with|prints)\s+`([^`]+)`")
QUOTED = [(p, " ".join(m.group(1).split()), m.group(2)) for p in DOCS
          for m in QUOTE.finditer(" ".join(p.read_text().split()))]


def test_the_docs_quote_figures():
    assert any(p.name == "usage.md" and "30.0%" in said for p, _, said in QUOTED)


@pytest.mark.slow  # a real run of each quoted command, at the size the page gives
@pytest.mark.parametrize("page, command, said", QUOTED, ids=lambda v: str(v)[-40:])
def test_a_quoted_figure_is_what_the_command_prints(page, command, said, tmp_path, monkeypatch, capsys):
    from ies.cli import main

    monkeypatch.chdir(tmp_path)
    main(shlex.split(command)[1:] + ["--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    pattern = ".*".join(re.escape(part.strip()) for part in said.split("..."))
    assert re.search(pattern, out.out + out.err, re.S), f"{page.name}: `{command}` printed\n{out.out}{out.err}"
