"""No run lost: one writer per run folder, refused folders left untouched, failed writes that
name the file and keep the last checkpoint, and CLI commands that fail with a message."""

import contextlib
import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import pvae
from pvae.checkpoint import CheckpointError, load_checkpoint
from pvae.cli import main
from pvae.training import drop_timings

QUICK = ["--set", "model.latent_dim=3", "--set", "train.device=cpu", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the first run exited ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(lines) == 1, stderr
    return lines[0]


@contextlib.contextmanager
def one_thread():
    """Run in this process as the subprocesses here do (OMP_NUM_THREADS=1): the same
    summation orders, so histories compare exactly with theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_one_writer_per_run_folder_and_a_killed_runs_lock_is_taken_over(tmp_path, capsys):
    # The first run is a real process (it is killed); the others run in this one, which is
    # another process to the lock all the same (and spares three interpreter starts).
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--set", "train.epochs=999", *QUICK]
    first = subprocess.Popen(
        [sys.executable, "-m", "pvae", *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(run / ".lock", first)
        for argv in (["--out", str(run), *QUICK], ["--resume", str(run), "--no-progress"]):
            capsys.readouterr()
            assert main(["train", *argv]) == 2
            line = error_line(capsys.readouterr().err)
            assert line.startswith("pvae train: error: run folder ")
            assert f"{str(run)!r} is in use by another pvae process (PID {first.pid})" in line
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()  # SIGKILL: no handler runs, the lock file stays behind
        first.wait()
        first.stderr.close()
    assert (run / ".lock").read_text().strip() == str(first.pid)

    epochs = load_checkpoint(run / "checkpoint.pt")["epoch"] + 2
    capsys.readouterr()
    with one_thread():
        resumed = main(["train", "--resume", str(run), "--set", f"train.epochs={epochs}", "--json"])
    assert resumed == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epoch"] == epochs
    assert not (run / ".lock").exists()

    ref = tmp_path / "ref"
    with one_thread():
        full = main(["train", "--out", str(ref), "--set", f"train.epochs={epochs}", *QUICK])
    assert full == 0, capsys.readouterr().err
    assert drop_timings(json.loads((run / "metrics.json").read_text())) == drop_timings(
        json.loads((ref / "metrics.json").read_text())
    )


def test_out_that_holds_the_users_files_is_refused_and_left_untouched(tmp_path, capsys):
    exp = tmp_path / "exp1"
    exp.mkdir()
    config = exp / "config.toml"
    config.write_text("[train]\nepochs = 1\n")
    before = config.read_bytes()
    assert main(["train", "--config", str(config), "--out", str(exp), *QUICK]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{str(exp)!r} exists and is not empty, and holds no run to resume" in line
    assert config.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.toml", "exp1"]


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    tmp_path, monkeypatch, capsys
):
    from pvae.training import checkpointing

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the first checkpoint")

    monkeypatch.setattr(checkpointing, "save_checkpoint", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["train", "--out", str(tmp_path / "r"), "--set", "train.epochs=1", *QUICK])
    assert list(tmp_path.iterdir()) == []


def test_an_empty_existing_folder_is_used_and_a_folder_appears_only_when_complete(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *QUICK]) == 0
    assert {"checkpoint.pt", "config.toml", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert not (run / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no staging folder left


@pytest.fixture
def one_epoch_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *QUICK]) == 0
    return run


def failing_writes(monkeypatch, name, error):
    """Writes of the file ``name`` fail with ``error`` (when creating the temporary file)."""
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, prefix=None, **kwargs):
        if prefix == f".{name}.":
            raise error
        return real(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize(
    ("file", "error"),
    [
        ("checkpoint.pt", OSError(errno.ENOSPC, "No space left on device")),
        ("config.toml", PermissionError(errno.EACCES, "Permission denied")),
        ("metrics.json", OSError(errno.ENOSPC, "No space left on device")),
    ],
    ids=["ENOSPC-checkpoint", "EACCES-config", "ENOSPC-metrics"],
)
def test_a_failed_write_names_the_file_and_keeps_the_last_checkpoint(
    one_epoch_run, monkeypatch, capsys, file, error
):
    run = one_epoch_run
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    failing_writes(monkeypatch, file, error)
    argv = ["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert error_line(err) == (
        f"pvae train: error: cannot write {str(run / file)!r}: {error.strerror}; "
        "its previous content is kept"
    )
    if file != "metrics.json":  # metrics are written after the epoch's checkpoint
        assert (run / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setenv("PVAE_DEBUG", "1")
    assert main(argv) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_failed_figure_write_is_reported_too(one_epoch_run, tmp_path, monkeypatch, capsys):
    failing_writes(monkeypatch, "s.png", OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "s.png"
    assert main(["sample", str(one_epoch_run), "--out", str(out), "--device", "cpu"]) == 1
    assert f"cannot write {str(out)!r}: No space left on device" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_run_folder_is_reported(one_epoch_run, capsys):
    run = one_epoch_run
    run.chmod(0o555)
    try:
        assert main(["train", "--resume", str(run), "--set", "train.epochs=2", *QUICK]) == 1
    finally:
        run.chmod(0o755)
    assert "Permission denied" in error_line(capsys.readouterr().err)


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 16 MiB tmpfs (root can mount one here; elsewhere the test is skipped)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["full disk", "read-only filesystem"])
def test_a_real_full_or_read_only_filesystem_is_reported(
    one_epoch_run, tiny_filesystem, fault, capsys
):
    import shutil

    run = tiny_filesystem / "run"
    shutil.copytree(one_epoch_run, run)
    before = (run / "checkpoint.pt").read_bytes()
    if fault == "full disk":  # fill what is left, so the next checkpoint cannot be written
        # Unbuffered: nothing is left to flush (and fail) on close.
        with open(tiny_filesystem / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        expected = "No space left on device"
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
        expected = "Read-only file system"
    capsys.readouterr()
    code = main(["train", "--resume", str(run), "--set", "train.epochs=2", *QUICK])
    stderr = capsys.readouterr().err  # in this process: the real errors, no interpreter start
    assert code == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert expected in line and str(run) in line and "Traceback" not in stderr, stderr
    assert (run / "checkpoint.pt").read_bytes() == before  # the last checkpoint is intact


def small_vae(**kw):
    return pvae.VAE(pvae.priors.StandardNormal(2), hidden=(8,), **kw)


def binary(n=5, shape=(1, 4, 4)):
    return torch.bernoulli(torch.full((n, *shape), 0.5), generator=torch.Generator().manual_seed(0))


ESTIMATORS = {
    "log_px": lambda vae, x: pvae.log_px(vae, x, k=4),
    "evaluate_elbo": lambda vae, x: pvae.evaluate_elbo(vae, x),
    "bounds": lambda vae, x: pvae.bounds(vae, x, ks=(1, 4)),
}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_estimators_refuse_data_outside_the_likelihoods_support_as_fit_does(estimator):
    x = binary() * 3
    with pytest.raises(ValueError, match=r"data must lie in \[0, 1\] for a Bernoulli likelihood"):
        pvae.fit(small_vae(), x, epochs=1, progress=False, device="cpu")
    vae = small_vae(data_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\] for a Bernoulli likelihood"):
        ESTIMATORS[estimator](vae, x)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_estimators_refuse_an_unbuilt_vae(estimator):
    with pytest.raises(ValueError, match="the VAE is not built.*build the VAE first or pass"):
        ESTIMATORS[estimator](small_vae(), binary())


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_estimators_take_float64_and_name_a_flat_input(estimator):
    vae = small_vae(data_shape=(1, 4, 4))
    x = binary()
    est = ESTIMATORS[estimator](vae, x.double())
    ref = ESTIMATORS[estimator](vae, x)
    assert type(est) is type(ref)  # the data follow the model's dtype, as in fit
    with pytest.raises(ValueError, match=r"x has datapoints of shape \(16,\), but the VAE was"):
        ESTIMATORS[estimator](vae, x.reshape(5, -1))


def test_a_checkpoint_holding_code_is_refused_without_torchs_advice(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "pvae-checkpoint", "payload": Payload()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    msg = str(caught.value)
    assert msg.startswith(f"checkpoint {str(path)!r} is refused: it holds an object of type ")
    assert "never code" in msg
    assert "weights_only" not in msg and "corrupt" not in msg and "trust" not in msg


def test_config_that_is_a_folder_is_named_as_a_folder(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path), "--out", str(tmp_path / "r"), *QUICK]) == 2
    assert error_line(capsys.readouterr().err) == (
        f"pvae train: error: --config must be a TOML file, got the folder {str(tmp_path)!r}"
    )


def test_evaluate_refuses_num_samples_0(one_epoch_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(one_epoch_run), "--num-samples", "0", "--device", "cpu"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "pvae evaluate: error: --num-samples must be a positive integer, got 0"
    )


def test_the_staging_folder_of_a_killed_new_run_is_cleaned_up(tmp_path):
    stale = tmp_path / ".r.pvae-new-999999"  # a run killed before its first checkpoint
    stale.mkdir()
    (stale / ".lock").write_text("999999\n")
    (stale / "config.toml").write_text("")
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "train.epochs=1", *QUICK]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
