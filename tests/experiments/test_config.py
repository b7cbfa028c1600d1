"""Tests for ies.experiments.config.RunConfig: strict types, fitting names, the device.

Each bad value must be refused with one line naming the field and the fix, before training:
a config file's "augment": "no" is not False, "0.1" is not a number, true is not 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import torch

from ies.experiments.config import DEFAULTS_BY_DATASET, RunConfig, check_device
from ies.experiments.data import DATASET_INPUTS
from ies.experiments.models import MODEL_INPUTS

# field value -> fragment of the message. Every case is a type or range error, so both the
# JSON path (from_dict / from_file) and the programmatic path (RunConfig(...).resolved()) refuse it.
TYPE_CASES: Dict[str, tuple] = {
    "augment 'no'": ({"augment": "no"}, "augment must be true or false, got 'no' (str)"),
    "augment 1": ({"augment": 1}, "augment must be true or false, got 1 (int)"),
    "val_fraction '0.1'": ({"val_fraction": "0.1"}, "val_fraction must be a number, got '0.1' (str)"),
    "val_fraction true": ({"val_fraction": True}, "val_fraction must be a number, got True (bool)"),
    "val_fraction nan": ({"val_fraction": math.nan}, "val_fraction must be a finite number"),
    "val_fraction 0.5": ({"val_fraction": 0.5}, "val_fraction must be in [0, 0.5)"),
    "val_fraction null": ({"val_fraction": None}, "val_fraction must not be null"),
    "lr inf": ({"lr": math.inf}, "lr must be a finite number, got inf"),
    "lr nan": ({"lr": math.nan}, "lr must be a finite number, got nan"),
    "lr -inf": ({"lr": -math.inf}, "lr must be a finite number"),
    "lr '0.1'": ({"lr": "0.1"}, "lr must be a number, got '0.1' (str)"),
    "lr true": ({"lr": True}, "lr must be a number, got True (bool)"),
    "lr 0": ({"lr": 0}, "lr must be > 0"),
    "lr negative": ({"lr": -0.1}, "lr must be > 0"),
    "weight_decay negative": ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    "weight_decay inf": ({"weight_decay": math.inf}, "weight_decay must be a finite number"),
    "epochs true": ({"epochs": True}, "epochs must be an integer, got True (bool)"),
    "epochs 10.0": ({"epochs": 10.0}, "epochs must be an integer, got 10.0 (float)"),
    "epochs '10'": ({"epochs": "10"}, "epochs must be an integer, got '10' (str)"),
    "epochs 0": ({"epochs": 0}, "epochs must be a positive integer"),
    "batch_size 1.5": ({"batch_size": 1.5}, "batch_size must be an integer"),
    "batch_size false": ({"batch_size": False}, "batch_size must be an integer, got False (bool)"),
    "train_size '100'": ({"train_size": "100"}, "train_size must be an integer"),
    "train_size 5": ({"train_size": 5}, "train_size must be an integer >= 10"),
    "score_batch_size 0": ({"score_batch_size": 0}, "score_batch_size must be a positive integer"),
    "eval_batch_size 2.0": ({"eval_batch_size": 2.0}, "eval_batch_size must be an integer"),
    "seed 1.0": ({"seed": 1.0}, "seed must be an integer, got 1.0 (float)"),
    "seed true": ({"seed": True}, "seed must be an integer, got True (bool)"),
    "seed -1": ({"seed": -1}, "seed must be an integer in [0, 2**32)"),
    "seed null": ({"seed": None}, "seed must not be null"),
    "data_seed '42'": ({"data_seed": "42"}, "data_seed must be an integer"),
    "data_seed 2**32": ({"data_seed": 2**32}, "data_seed must be an integer in [0, 2**32)"),
    "dataset 5": ({"dataset": 5}, "dataset must be a string, got 5 (int)"),
    "dataset list": ({"dataset": ["mnist1d"]}, "dataset must be a string"),
    "model 18": ({"model": 18}, "model must be a string"),
    "method null": ({"method": None}, "method must not be null"),
    "optimizer list": ({"optimizer": ["sgd"]}, "optimizer must be a string"),
    "device 0": ({"device": 0}, "device must be a string, got 0 (int)"),
    "data_dir 5": ({"data_dir": 5}, "data_dir must be a string"),
    "data_dir ''": ({"data_dir": " "}, "data_dir is empty"),
    "method_params list": ({"method_params": [1]}, "method_params must be an object"),
    "method_params int key": ({"method_params": {1: 2}}, "method_params keys must be parameter names"),
}

# Well-typed values that name something that does not exist or does not fit: refused by
# resolved()/validate() (which know the registries), before any data is loaded.
NAME_CASES: Dict[str, tuple] = {
    "unknown dataset": ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; choose one of"),
    "unknown model": ({"model": "alexnet"}, "unknown model 'alexnet'; choose one of"),
    "unknown method": ({"method": "magic"}, "unknown method 'magic'; choose one of"),
    "unknown optimizer": ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of"),
    "resnet18 on mnist1d": ({"model": "resnet18"},
                            "model 'resnet18' takes (N, C, H, W) images but dataset 'mnist1d' gives (N, L) 1-D "
                            "signals; use --model mlp-1d / mnist1d-cnn, or omit --model"),
    "small-cnn on mnist1d": ({"model": "small-cnn"}, "model 'small-cnn' takes (N, C, H, W) images"),
    "mnist1d-cnn on cifar10": ({"dataset": "cifar10", "model": "mnist1d-cnn"},
                               "model 'mnist1d-cnn' takes (N, L) 1-D signals but dataset 'cifar10' gives"),
    "mlp-1d on fashion-mnist": ({"dataset": "fashion-mnist", "model": "mlp-1d"}, "default (small-cnn)"),
    "device bogus": ({"device": "bogus"}, "device 'bogus' is not a torch device; use cpu, cuda or cuda:N"),
    "device cuda:99": ({"device": "cuda:99"}, "cuda:99"),
}


def _msg(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, "errors must be one line"
    return msg


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_type_errors_from_dict_and_programmatic(case: str) -> None:
    change, fragment = TYPE_CASES[case]
    with pytest.raises(ValueError) as e:
        RunConfig.from_dict(change)
    assert fragment in _msg(e)
    with pytest.raises(ValueError) as e:
        RunConfig(**change).resolved()
    assert fragment in _msg(e)


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_names_that_do_not_exist_or_fit(case: str) -> None:
    change, fragment = NAME_CASES[case]
    with pytest.raises(ValueError) as e:
        RunConfig(**change).resolved()
    assert fragment in _msg(e)


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    p = tmp_path / "run.json"
    p.write_text('{"augment": "no", "epochs": 3}')
    with pytest.raises(ValueError) as e:
        RunConfig.from_file(str(p))
    assert _msg(e).startswith(f"config file {p}: augment must be true or false")
    p.write_text('{"lr": Infinity}')  # Python's json reads Infinity / NaN as floats
    with pytest.raises(ValueError, match="lr must be a finite number"):
        RunConfig.from_file(str(p))
    p.write_text('[1, 2]')
    with pytest.raises(ValueError, match="must be a JSON object"):
        RunConfig.from_file(str(p))
    p.write_text('{"epochs": 3,}')
    with pytest.raises(ValueError, match="not valid JSON"):
        RunConfig.from_file(str(p))


def test_cuda_refused_when_unavailable() -> None:
    if torch.cuda.is_available():
        check_device("cuda")  # accepted where it exists
        with pytest.raises(ValueError, match="does not exist"):
            check_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(ValueError) as e:
            RunConfig(device="cuda").resolved()
        assert "CUDA is not available here; use --device cpu" in _msg(e)


@pytest.mark.parametrize("change", [
    {},
    {"lr": 1},  # an int where a float is expected is a number
    {"val_fraction": 0},
    {"augment": False},
    {"augment": True, "dataset": "fashion-mnist"},
    {"epochs": np.int64(3), "batch_size": 32},  # numpy integers are integers
    {"lr": np.float64(0.01), "weight_decay": 0},
    {"model": "mlp-1d"},
    {"dataset": "cifar100", "model": "vgg16", "data_dir": "/nowhere"},  # the files are checked at load
    {"device": "cpu", "seed": 2**32 - 1},
])
def test_valid_configs_resolve(change: Dict[str, Any]) -> None:
    cfg = RunConfig.from_dict(dict(change)).resolved()
    assert cfg.model is not None and cfg.epochs is not None and cfg.lr is not None
    for k, v in change.items():
        assert getattr(cfg, k) == v


def test_every_default_model_fits_its_dataset() -> None:
    for name, defaults in DEFAULTS_BY_DATASET.items():
        assert MODEL_INPUTS[defaults["model"]] == DATASET_INPUTS[name]
        RunConfig(dataset=name).resolved()


def test_a_model_registered_at_run_time_is_not_kind_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from ies.experiments import models

    monkeypatch.setitem(models.MODELS, "my-net", lambda **kw: torch.nn.Linear(40, 10))
    assert RunConfig(model="my-net").resolved().model == "my-net"


def test_check_types_changes_nothing() -> None:
    cfg = RunConfig(augment="no")  # type: ignore[arg-type]
    before = cfg.to_dict()
    with pytest.raises(ValueError):
        cfg.resolved()
    assert cfg.to_dict() == before


# The CLI turns these ValueErrors into one line on stderr with exit status 2, before training.
@pytest.mark.parametrize("argv,config,fragment", [
    (["--model", "resnet18"], None, "model 'resnet18' takes (N, C, H, W) images"),
    (["--device", "bogus"], None, "device 'bogus' is not a torch device"),
    ([], {"augment": "no"}, "augment must be true or false"),
    ([], {"val_fraction": "0.1"}, "val_fraction must be a number"),
    ([], {"epochs": True}, "epochs must be an integer, got True (bool)"),
])
def test_cli_refuses_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv, config,
                                            fragment: str) -> None:
    from ies.cli import main

    args = ["train", "--train-size", "100", "--quiet", "--out", str(tmp_path / "run"), *argv]
    if config is not None:
        (tmp_path / "c.json").write_text(json.dumps(config))
        args += ["--config", str(tmp_path / "c.json")]
    if "epochs" not in (config or {}):  # a flag would override the file's bad value
        args += ["--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run" / "metrics.csv").exists()
