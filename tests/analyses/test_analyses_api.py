"""The analyses as a library (`run_analyses`), apart from the command line that drives them."""

import json
from dataclasses import fields

import pytest

from ies.cli import build_parser
from ies.experiments.analyses import ANALYSES, AnalysisOptions, headline, run_analyses
from ies.experiments.config import RunConfig
from ies.experiments.data import load_dataset


def _tuples(v):
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


def test_every_option_has_a_flag_with_the_same_default():
    args = build_parser().parse_args(["analyze", "all"])
    # --lr is the run configuration's flag; the others are the analyses' own.
    missing = [f.name for f in fields(AnalysisOptions) if f.name != "lr" and not hasattr(args, f.name)]
    assert missing == []
    got = AnalysisOptions(**{f.name: _tuples(getattr(args, f.name)) for f in fields(AnalysisOptions)})
    assert got == AnalysisOptions()


def test_run_analyses_records_the_command_it_is_given(tmp_path):
    base = RunConfig(method="none", train_size=200, epochs=2).resolved()
    data = load_dataset("mnist1d", train_size=200)
    lines = []
    index = run_analyses("gradnorm", base=base, data=data, out=tmp_path, command="ies analyze gradnorm --from-code",
                         log=lines.append)
    assert list(index) == ["gradnorm"] and index["gradnorm"]["folder"] == str(tmp_path)
    payload = json.loads((tmp_path / "gradnorm.json").read_text())
    assert payload["command"] == "ies analyze gradnorm --from-code"
    for run in ("none-seed0", "ies-seed0"):
        meta = json.loads((tmp_path / "runs" / run / "config.json").read_text())
        assert meta["command"] == "ies analyze gradnorm --from-code" and meta["analysis"] == tmp_path.name
    assert len(lines) == 1 and lines[0].startswith("gradnorm (") and "grad_norm: none " in lines[0]


@pytest.mark.parametrize("name, summary, expected", [
    ("gradnorm", {"grad_norm": {"none": {"mean": 1.5}, "ies": {"mean": 2.25}}}, "grad_norm: none 1.5, ies 2.25"),
    ("mastery", {"removed": {"0": {"final_mastered": 3.0}}, "kept": {"0": {"final_mastered": 7.0}}},
     "removed final mastered o0=3; kept o0=7"),
    ("transfer", {"none": {"transfer_acc_1ep": 50.0, "pretrain_test_acc": 1.0}, "ies": {"transfer_acc_1ep": 52.5}},
     "transfer_acc_1ep: none 50.0%, ies 52.5%"),
    ("gradnorm", {"grad_norm": {"none": {"mean": None}}}, ""),  # a missing number: no headline, no crash
])
def test_headline(name, summary, expected):
    assert headline(name, summary) == expected


def test_unknown_analysis_is_refused_before_anything_runs(tmp_path):
    base = RunConfig(method="none", train_size=200, epochs=1).resolved()
    with pytest.raises(ValueError, match="choose one of " + ", ".join(ANALYSES)):
        run_analyses("flatness", base=base, data=None, out=tmp_path / "x", command="")
    assert not (tmp_path / "x").exists()


def _imported_modules(path, package):
    """Absolute names of the modules a file imports (relative imports resolved against ``package``)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[:len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(x for x in (base, node.module or "") if x)
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_the_experiments_package_never_imports_the_cli(tmp_path):
    # The engine and the analyses sit below the command line: ies.cli imports them, never the reverse.
    from pathlib import Path

    import ies.experiments

    def cli_imports(path, package):
        return [m for m in _imported_modules(path, package) if m == "ies.cli" or m.startswith("ies.cli.")]

    root = Path(ies.experiments.__file__).parent
    offenders = []
    for f in sorted(root.rglob("*.py")):
        package = ".".join(["ies", "experiments", *f.relative_to(root).parts[:-1]])
        offenders += [f"{f.relative_to(root)}: {m}" for m in cli_imports(f, package)]
    assert offenders == []
    # The check itself catches the relative forms a module in experiments/analysis could use.
    bad = tmp_path / "bad.py"
    bad.write_text("from ...cli import common\nfrom ... import cli\nimport ies.cli.analyze\n")
    assert cli_imports(bad, "ies.experiments.analysis") == ["ies.cli", "ies.cli.common", "ies.cli", "ies.cli.analyze"]
