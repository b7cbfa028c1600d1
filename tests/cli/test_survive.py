"""Issue 21: run folders that survive misuse: locks, atomic starts, checksums, value checks, bounded inputs.

Each test is one probe of the issue (docs/reliability.md's "Runs that survive" table names it).
"""

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ies.cli import main
from ies.experiments import engine
from ies.experiments.runlock import LOCK_NAME, FolderLocked, acquire, release

TINY = ["--epochs", "2", "--train-size", "120", "--quiet"]


def _status(d: Path) -> dict:
    return json.loads((d / "status.json").read_text())


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _hold(folder: Path, pid: int = 4242):
    """Lock ``folder`` through a second open file description, as another process would, recording ``pid``."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": pid, "host": socket.gethostname(), "since": "now"}).encode())
    return fd


@pytest.fixture
def done_run(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def killed_run(tmp_path, monkeypatch):
    """A run folder as SIGKILL after epoch 1 of 3 leaves it (status running, a checkpoint)."""
    out = tmp_path / "k"
    calls = []
    real = engine._epoch

    def epoch(*a, **k):
        if calls:
            raise KeyboardInterrupt  # stands in for the kill; status is then rewritten to running below
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(engine, "_epoch", epoch)
    assert main(["train", "--epochs", "3", "--train-size", "120", "--quiet", "--out", str(out)]) == 130
    monkeypatch.setattr(engine, "_epoch", real)
    st = _status(out)
    st["status"] = "running"
    (out / "status.json").write_text(json.dumps(st))
    return out


# -- 1. one process per folder ------------------------------------------------------------------------------

def test_resume_and_overwrite_of_a_locked_folder_are_refused_naming_the_pid(killed_run, capsys):
    fd = _hold(killed_run, pid=4242)
    try:
        before = sorted(p.name for p in killed_run.iterdir())
        assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
        err = _one_line(capsys)
        assert str(killed_run) in err and "process 4242" in err
        assert main(["train", *TINY, "--out", str(killed_run), "--overwrite"]) == 2
        assert "process 4242" in _one_line(capsys)
        assert sorted(p.name for p in killed_run.iterdir()) == before  # nothing deleted
    finally:
        os.close(fd)
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 0  # the holder is gone: free again
    assert _status(killed_run)["status"] == "complete"


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(killed_run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (killed_run / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 0
    assert json.loads((killed_run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_locks_are_counted_per_process_and_refused_to_others(tmp_path):
    acquire(tmp_path)
    acquire(tmp_path)  # the CLI locks --out, then the run inside it (the same folder for ies train)
    release(tmp_path)
    fd = os.open(tmp_path / LOCK_NAME, os.O_RDWR)
    with pytest.raises(OSError):  # still held after one of two releases
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    release(tmp_path)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free now
    with pytest.raises(FolderLocked, match=str(os.getpid())):
        acquire(tmp_path)  # held by "another process" (our other descriptor)
    os.close(fd)


@pytest.mark.slow
def test_a_second_live_ies_train_on_the_folder_is_refused(tmp_path):
    out = tmp_path / "r"
    child = subprocess.Popen([sys.executable, "-m", "ies", "train", "--epochs", "400", "--train-size", "400", "-q",
                              "--out", str(out)], stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while not (out / "metrics.csv").exists():
            assert child.poll() is None, child.communicate()
        for extra in (["--resume", str(out)], ["--out", str(out), "--overwrite", *TINY]):
            r = subprocess.run([sys.executable, "-m", "ies", "train", *extra, "-q"], capture_output=True, text=True)
            assert r.returncode == 2 and f"process {child.pid}" in r.stderr, r.stderr
        assert child.poll() is None and (out / "config.json").exists()  # the live run was left alone
    finally:
        child.kill()
        child.wait()


# -- 2. starts that cannot leave a half-written folder -------------------------------------------------------

@pytest.mark.parametrize("content", ["", "{\"conf"])
def test_a_folder_killed_as_it_started_counts_as_empty(content, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(content)  # what a kill in the first milliseconds left before issue 21
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert "stopped as it started" in _one_line(capsys)
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert _status(out)["status"] == "complete"


def test_orphan_tmp_files_are_removed_at_start_and_on_resume(killed_run, tmp_path):
    orphans = [killed_run / ".checkpoint.pt.999.tmp", killed_run / ".metrics.csv.999.tmp"]
    for f in orphans:
        f.write_bytes(b"x" * 100)
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 0
    assert not any(f.exists() for f in orphans)
    assert not list(killed_run.glob(".*.tmp"))
    fresh = tmp_path / "f"
    fresh.mkdir()
    (fresh / ".config.json.7.tmp").write_text("{")
    assert main(["train", *TINY, "--out", str(fresh)]) == 0  # an orphan alone does not make a folder "not empty"
    assert not list(fresh.glob(".*.tmp"))


def test_status_and_config_are_whole_json_with_the_checkpoint_digest(killed_run):
    st = _status(killed_run)
    assert len(st["checkpoint_sha256"]) == 64
    assert (killed_run / "checkpoint.pt.sha256").read_text().strip() == st["checkpoint_sha256"]
    assert json.loads((killed_run / "config.json").read_text())["config"]["epochs"] == 3


# -- 3. checksums and values checked on resume ----------------------------------------------------------------

def _rewrite(folder: Path, change) -> None:
    """Change the checkpoint and re-record its digest (so only the value checks can catch it)."""
    from ies.experiments.checkpoints import write_checkpoint

    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    change(state)
    digest = write_checkpoint(state, folder / "checkpoint.pt")
    st = _status(folder)
    st["checkpoint_sha256"] = digest
    (folder / "status.json").write_text(json.dumps(st))


def test_a_flipped_bit_in_the_checkpoint_is_refused_and_marks_the_run_failed(killed_run, capsys):
    f = killed_run / "checkpoint.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
    err = _one_line(capsys)
    assert "checkpoint.pt does not match its SHA-256" in err
    st = _status(killed_run)
    assert st["status"] == "failed" and "SHA-256" in st["error"]


def _big_weight(s):
    next(iter(s["model"].values())).view(-1)[0] = float("inf")


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(rows=[]), "field rows has 0 rows but epochs_done is 1"),
    (lambda s: s.update(base_lrs=[1e6 for _ in s["base_lrs"]]), "field base_lrs"),
    (_big_weight, "holds NaN or infinite values"),
    (lambda s: s["policy"].update(epoch=5), "field policy.epoch"),
    (lambda s: s["policy"]["books"]["total"].update(backprop=float("nan")), "field policy.books.total"),
    (lambda s: s["policy"]["books"]["total"].update(epochs=4), "field policy.books.total.epochs"),
    (lambda s: s.update(epochs_done=9), "field epochs_done"),
    (lambda s: s["config"].update(lr=0.5), "field config differs"),
])
def test_checkpoint_values_are_checked_on_resume(change, field, killed_run, capsys):
    _rewrite(killed_run, change)
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
    err = _one_line(capsys)
    assert field in err and "checkpoint.pt" in err, err
    assert _status(killed_run)["status"] == "failed"


def test_an_edited_config_json_on_resume_is_one_line(killed_run, capsys):
    meta = json.loads((killed_run / "config.json").read_text())
    meta["config"]["lr"] = "fast"
    (killed_run / "config.json").write_text(json.dumps(meta))
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
    assert "config.json was edited" in _one_line(capsys)


@pytest.mark.parametrize("status", ["garbage{", "[1, 2]", '{"status": "done"}'])
def test_a_damaged_status_json_is_one_line(status, killed_run, capsys):
    (killed_run / "status.json").write_text(status)
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
    assert "status.json" in _one_line(capsys)


def test_complete_without_a_summary_is_refused_by_train_and_compare(done_run, capsys):
    (done_run / "summary.json").unlink()
    assert main(["train", "--resume", str(done_run), "--quiet"]) == 2
    assert "summary.json is missing" in _one_line(capsys)


def test_compare_resume_over_a_run_complete_without_summary_is_one_line(tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compare", *TINY, "--seeds", "1", "--methods", "none"]
    assert main([*argv, "--out", str(out)]) == 0
    (out / "runs" / "none-seed0" / "summary.json").unlink()
    capsys.readouterr()
    assert main([*argv, "--resume", str(out)]) == 2
    assert "says complete but" in _one_line(capsys)


def test_compare_resume_on_a_train_folder_is_refused(done_run, capsys):
    before = sorted(p.name for p in done_run.iterdir())
    assert main(["compare", *TINY, "--seeds", "1", "--resume", str(done_run)]) == 2
    assert "ies train --resume" in _one_line(capsys)
    assert sorted(p.name for p in done_run.iterdir()) == before


def test_a_write_error_names_the_file_and_marks_the_run_failed(tmp_path, monkeypatch, capsys):
    from ies.experiments import checkpoints

    def full(state, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr("ies.experiments.runs.write_checkpoint", full)
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 1
    err = _one_line(capsys)
    assert "checkpoint.pt" in err and "No space left" in err
    st = _status(out)
    assert st["status"] == "failed" and "No space left" in st["error"]
    assert checkpoints.SIDECAR and not list(out.glob(".*.tmp"))


def test_a_read_only_out_is_one_line(tmp_path, monkeypatch, capsys):
    def denied(path, *a, **k):  # what a read-only file system says (we run as root here, so chmod would not)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "mkdir", denied)
    assert main(["train", *TINY, "--out", str(tmp_path / "ro" / "r")]) == 2
    err = _one_line(capsys)
    assert "Permission denied" in err and "ro/r" in err


# -- 4, 5, 7. one-line errors and bounds before allocation -------------------------------------------------------

def _deep(p: Path) -> str:
    p.write_text("[" * 100_000 + "]" * 100_000)
    return str(p)


def _dup(p: Path) -> str:
    p.write_text('{"epochs": 2, "epochs": 3}')
    return str(p)


@pytest.mark.parametrize("argv, needle", [
    (["--method", "ies:total_epochs=5"], "total_epochs is set by the run"),
    (["--method", "ies:seed=3"], "use --seed instead"),
    (["--method", "ies:probe_max_interval=2147483648"], "probe_max_interval must be at most 100,000"),
    (["--method", "ies:probe_every=100001"], "probe_every must be at most 100,000"),
    (["--method", "ies:threshold=0.1:threshold=0.2"], "threshold is given twice"),
    (["--method", "ies:threshold=" + "[" * 50_000], "characters; give a number or a word"),
    (["--epochs", "100000000", "--method", "ies:target_saving=0.3"], "epochs must be at most 100,000"),
    (["--threads", "100000"], "more than this machine's"),
    (["--config", "DIR"], "is a folder; pass a JSON file"),
    (["--config", "/dev/zero"], "/dev/zero is not a regular file"),
    (["--config", "DEEP"], "nests too deep"),
    (["--config", "DUP"], "key 'epochs' appears more than once"),
])
def test_user_errors_of_issue_21_are_one_line(argv, needle, tmp_path, capsys):
    subs = {"DIR": str(tmp_path), "DEEP": lambda: _deep(tmp_path / "deep.json"), "DUP": lambda: _dup(tmp_path / "d.json")}
    argv = [(subs[a]() if callable(subs[a]) else subs[a]) if a in subs else a for a in argv]
    out = tmp_path / "o"
    try:
        rc = main(["train", "--epochs", "1", "--train-size", "100", "-q", "--out", str(out), *argv])
    except SystemExit as e:  # argparse's own refusal (--threads): usage line, then the error
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and not any("Traceback" in ln for ln in err), err
    assert not out.exists()  # refused before the folder is made


def test_a_21_digit_integer_threshold_is_a_number():
    from ies import IES

    assert IES(10, threshold=10**20).config.threshold == 1e20  # compared as a float, no OverflowError


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
def test_a_kill_right_after_start_leaves_a_folder_that_resumes_or_starts_fresh(delay, tmp_path):
    """SIGKILL within milliseconds of the folder appearing: config.json is whole or absent, never empty."""
    import signal
    import time

    out = tmp_path / "r"
    argv = ["train", "--epochs", "2", "--train-size", "120", "-q"]
    child = subprocess.Popen([sys.executable, "-m", "ies", *argv, "--out", str(out)], stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not out.exists() and child.poll() is None:
        time.sleep(0.001)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    child.wait()
    cfg = out / "config.json"
    if cfg.exists():
        assert json.loads(cfg.read_text())["config"]["epochs"] == 2  # whole, never 0 bytes
        assert main(["train", "--resume", str(out), "-q"]) == 0
    else:
        assert main([*argv, "--out", str(out)]) == 0  # the lock file alone does not make it "not empty"
    assert _status(out)["status"] == "complete" and not list(out.glob(".*.tmp"))


def test_ctrl_c_before_the_first_epoch_does_not_claim_a_saved_epoch(tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_epoch", interrupted)
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "before the first epoch finished, so no epoch is saved" in err and "last finished epoch is saved" not in err
    assert _status(out)["status"] == "interrupted"


def test_a_full_disk_mid_checkpoint_deletes_its_tmp_file(tmp_path, monkeypatch, capsys):
    real = torch.save

    def half_then_full(obj, f, *a, **k):  # writes part of the file, then the disk is full
        f.write(b"PK" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 1
    assert f"No space left on device: {out / 'checkpoint.pt'}" in _one_line(capsys)
    monkeypatch.setattr(torch, "save", real)
    assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.pt").exists()
    st = _status(out)
    assert st["status"] == "failed" and "No space left" in st["error"]


def test_an_unreadable_checkpoint_with_a_matching_digest_is_one_line(killed_run, capsys):
    from ies.experiments.checkpoints import file_sha256

    f = killed_run / "checkpoint.pt"
    f.write_bytes(f.read_bytes()[:1000])  # cut by a tool that then re-recorded the digest
    (killed_run / "checkpoint.pt.sha256").write_text(file_sha256(f))
    assert main(["train", "--resume", str(killed_run), "--quiet"]) == 2
    assert "cannot read checkpoint" in _one_line(capsys)
    assert _status(killed_run)["status"] == "failed"


def test_save_run_locks_and_writes_a_complete_folder(tmp_path):
    from types import SimpleNamespace

    from ies.experiments.runs import save_run

    res = SimpleNamespace(config={"method": "none"}, epochs=[{"epoch": 1, "test_acc": 50.0}],
                          summary={"final_test_acc": 50.0}, per_sample={"loss": torch.zeros(3)})
    d = save_run(res, tmp_path / "a")
    assert _status(d)["status"] == "complete" and (d / "per_sample.npz").exists()
    busy = tmp_path / "b"
    busy.mkdir()
    fd = _hold(busy, pid=77)
    try:
        with pytest.raises(FolderLocked, match="process 77"):
            save_run(res, busy)
    finally:
        os.close(fd)
    assert not (busy / "config.json").exists()


def test_without_flock_the_recorded_pid_and_host_decide(tmp_path, monkeypatch):
    from ies.experiments import runlock

    def no_flock(fd):
        raise OSError(38, "flock is not available")

    monkeypatch.setattr(runlock, "_flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "since": "x"}))
        with pytest.raises(FolderLocked, match=f"process {live.pid}"):
            acquire(tmp_path)
    finally:
        live.kill()
        live.wait()
    acquire(tmp_path)  # the holder's pid is gone: stale, taken over
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    release(tmp_path)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "another-host", "since": "x"}))
    with pytest.raises(FolderLocked, match=f"another-host.*if that run is gone, delete {tmp_path / LOCK_NAME}"):
        acquire(tmp_path)  # another host's pid cannot be checked from here


def test_a_full_disk_while_completing_ends_the_run_failed(tmp_path, monkeypatch, capsys):
    from ies.experiments import runs

    real = runs.atomic_write_json

    def full_on_summary(path, obj, **k):
        if Path(path).name == "summary.json":
            raise OSError(28, "No space left on device", str(path))
        return real(path, obj, **k)

    monkeypatch.setattr(runs, "atomic_write_json", full_on_summary)
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 1
    assert "summary.json" in _one_line(capsys)
    st = _status(out)
    assert st["status"] == "failed" and "No space left" in st["error"] and st["epochs_done"] == 2
    monkeypatch.setattr(runs, "atomic_write_json", real)
    assert main(["train", "--resume", str(out), "-q"]) == 0  # space freed: the last checkpoint finishes it
    assert _status(out)["status"] == "complete"


@pytest.mark.slow
def test_repeated_sigkills_at_random_moments_resume_to_the_uninterrupted_metrics(tmp_path):
    """Kills land anywhere (mid-checkpoint, between the digest files, mid-status): every resume's
    checksum check passes and the final metrics equal an uninterrupted run's."""
    import csv
    import random
    import signal
    import time

    run = ["--epochs", "100", "--train-size", "300", "-q"]  # long enough that most kills land on a quiet machine
    ref = tmp_path / "ref"
    assert main(["train", *run, "--out", str(ref)]) == 0
    out = tmp_path / "r"
    rng = random.Random(21)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [*run, "--out", str(out)]
    kills = 0
    for _ in range(8):
        child = subprocess.Popen([sys.executable, "-m", "ies", "train", *argv], stderr=subprocess.PIPE, text=True,
                                 env=env)
        n0 = len((out / "metrics.csv").read_text().splitlines()) if (out / "metrics.csv").exists() else 0
        while child.poll() is None and not (out / LOCK_NAME).exists():
            time.sleep(0.005)  # the folder is locked just before this run starts writing into it
        while child.poll() is None and (out / "metrics.csv").exists() and \
                len((out / "metrics.csv").read_text().splitlines()) <= n0 and n0:
            time.sleep(0.005)  # a resume: let it re-read its checkpoint first
        time.sleep(rng.uniform(0.0, 0.2))
        child.send_signal(signal.SIGKILL)
        kills += child.wait() == -signal.SIGKILL
        if (out / "config.json").exists() and json.loads((out / "config.json").read_text() or "null"):
            argv = ["--resume", str(out), "-q"]
        if (out / "status.json").exists() and _status(out)["status"] == "complete":
            break
    assert main(["train", *argv]) == 0
    wall = {"train_seconds", "probe_seconds", "wall_seconds", "probe_share"}

    def rows(d):
        with open(d / "metrics.csv", newline="") as f:
            return [{k: v for k, v in r.items() if k not in wall} for r in csv.DictReader(f)]

    assert kills >= 4 and rows(out) == rows(ref)
    assert not list(out.glob(".*.tmp")) and not (out / "checkpoint.pt").exists()
