import math
import os
import pickle

import pytest
import torch

import pvae
from pvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pvae.config import Config
from pvae.training import drop_timings


def quick_config(**train):
    return Config.from_dict(
        {
            "model": {"latent_dim": 4, "encoder": {"hidden": [64]}, "decoder": {"hidden": [64]}},
            "train": {"epochs": 4, "batch_size": 64, "progress": False, "device": "cpu", **train},
            # Curves every epoch: resume must also reproduce their random draws.
            "eval": {"curve_ks": [2, 10], "curve_every": 1, "curve_subset": 32},
        }
    )


def test_training_on_digits_raises_validation_elbo(digits):
    torch.manual_seed(0)
    vae = pvae.VAE(pvae.priors.StandardNormal(8))
    vae.build(digits.data_shape)
    initial = pvae.evaluate_elbo(vae, digits.val.observed()).summary()["elbo"]
    res = pvae.fit(vae, digits, epochs=40, progress=False, device="cpu")
    final = res.final["val_elbo"]
    # Untrained: about 64 log 2 = 44.4 nats of coin flips. Trained 40 epochs: about -25.
    assert initial < -40
    assert final > -27.5
    assert final - initial > 15


def test_same_seed_gives_identical_metrics(tmp_path, digits):
    a = pvae.train_from_config(quick_config(), tmp_path / "a", data=digits)
    b = pvae.train_from_config(quick_config(), tmp_path / "b", data=digits)
    assert drop_timings(a.history) == drop_timings(b.history)
    c = pvae.train_from_config(quick_config(seed=1), tmp_path / "c", data=digits)
    assert drop_timings(c.history) != drop_timings(a.history)


def test_resume_equals_uninterrupted_training(tmp_path, digits):
    full = pvae.train_from_config(quick_config(epochs=4), tmp_path / "full", data=digits)
    pvae.train_from_config(quick_config(epochs=2), tmp_path / "part", data=digits)
    resumed = pvae.train_from_config(
        quick_config(epochs=4), tmp_path / "part", resume=True, data=digits
    )
    assert "val_log_px" in full.history[1]  # curve points are part of what must match
    assert drop_timings(resumed.history) == drop_timings(full.history)
    for (k, v), w in zip(
        full.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)


def test_run_folder_holds_config_checkpoint_metrics_and_pictures(tmp_path, digits):
    pvae.train_from_config(quick_config(epochs=2), tmp_path / "r", data=digits)
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == [
        "checkpoint.pt",
        "config.toml",
        "curves.png",
        "metrics.csv",
        "metrics.json",
        "reconstructions.png",
        "samples.png",
    ]
    run = pvae.load_run(tmp_path / "r")
    assert run.checkpoint["epoch"] == 2 and run.config == quick_config(epochs=2)
    with pytest.raises(ValueError, match="already holds a checkpoint; use --resume"):
        pvae.train_from_config(quick_config(), tmp_path / "r", data=digits)


class Poisoned(torch.nn.Module):
    """Decoder that misbehaves from its ``after``-th training call on."""

    def __init__(self, inner, after, error=None):
        super().__init__()
        self.inner, self.after, self.error, self.calls = inner, after, error, 0

    def forward(self, z):
        out = self.inner(z)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls >= self.after:
                if self.error is not None:
                    raise self.error
                return out * float("nan")
        return out


def poisoned_vae(after, error=None):
    vae = pvae.VAE(
        pvae.priors.StandardNormal(2), decoder=Poisoned(pvae.nets.MLP(2, (6,)), after, error)
    )
    return vae


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro's own notice
def test_nan_loss_names_epoch_and_step_and_keeps_last_checkpoint(tmp_path):
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    vae = poisoned_vae(after=7)  # 4 steps per epoch: the 7th call is epoch 2, step 3
    with pytest.raises(
        pvae.TrainingDivergedError,
        match=r"loss became nan at epoch 2, step 3 of the epoch \(global step 7\)"
        r".*checkpoint \(epoch 1\)",
    ):
        pvae.fit(vae, x, batch_size=10, epochs=3, run_dir=tmp_path, progress=False, device="cpu")
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_ctrl_c_keeps_last_checkpoint_and_the_run_resumes(tmp_path, capsys):
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    vae = poisoned_vae(after=6, error=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):  # quiet: that message is the only line written
        pvae.fit(vae, x, batch_size=10, epochs=3, run_dir=tmp_path, quiet=True, device="cpu")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    assert capsys.readouterr().err == (
        f"interrupted in epoch 2; checkpoint of epoch 1 kept in {tmp_path} (continue with resume)\n"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    vae.decoder.after = math.inf
    res = pvae.fit(
        vae, x, batch_size=10, epochs=3, run_dir=tmp_path, resume=True, progress=False, device="cpu"
    )
    assert [r["epoch"] for r in res.history] == [1, 2, 3]


def test_progress_shows_one_line_per_epoch_on_stderr(digits, capsys):
    vae = pvae.VAE(pvae.priors.StandardNormal(2), hidden=(16,))
    res = pvae.fit(vae, digits, epochs=2, device="cpu", log_every=3600)
    out = capsys.readouterr()
    assert out.out == ""  # stdout is left to results (--json)
    lines = out.err.splitlines()
    assert [line.split("train ELBO")[0].strip() for line in lines] == [
        "epoch    1/2",
        "epoch    2/2",
    ]
    assert all(
        "val ELBO" in line and " ± " in line and "(s.e. over data)" in line for line in lines
    )
    ips = res.final["images_per_second"]
    assert lines[-1].endswith(f"  {ips:.0f} img/s  {res.final['epoch_seconds']:.2f}s")


def test_crash_while_writing_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        path, {"epoch": 1, "step": 1, "model": {}, "optimizer": {}, "rng": {}, "history": []}
    )
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(
            path, {"epoch": 2, "step": 2, "model": {}, "optimizer": {}, "rng": {}, "history": []}
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.fixture
def trained_run(tmp_path, digits):
    pvae.train_from_config(quick_config(epochs=1), tmp_path / "run", data=digits)
    return tmp_path / "run"


def test_truncated_and_corrupt_checkpoints_are_rejected(trained_run):
    path = trained_run / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        pvae.load_run(trained_run)
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        pvae.load_run(trained_run)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_with_code_is_refused_and_foreign_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pvae-checkpoint", "payload": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="is refused: it holds an object of type") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value)  # never advise running a file's code
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a pvae checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_from_another_model_is_rejected(trained_run, tmp_path):
    other = pvae.VAE(pvae.priors.StandardNormal(7), data_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="from another model: .*shape mismatch"):
        pvae.training.load_run_state(trained_run, other)
    cfg = (trained_run / "config.toml").read_text().replace("latent_dim = 4", "latent_dim = 5")
    (trained_run / "config.toml").write_text(cfg)
    with pytest.raises(CheckpointError, match="from another model"):
        pvae.load_run(trained_run)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 1.5}, TypeError, "batch_size must be a positive integer, got 1.5"),
        ({"epochs": -1}, ValueError, "epochs must be a positive integer, got -1"),
        ({"lr": 0.0}, ValueError, "lr must be a finite number > 0, got 0.0"),
        (
            {"objective": "elbow"},
            ValueError,
            "unknown objective 'elbow'; valid: elbo, enum_elbo, iwae, meanfield_elbo",
        ),
        ({"optimizer": "sgd"}, ValueError, "unknown optimizer 'sgd'; valid: adam, clipped_adam"),
        ({"device": "tpu:0"}, ValueError, "device must be 'auto', 'cpu'"),
    ],
)
def test_bad_fit_arguments_are_named(kwargs, err, match, tmp_path):
    vae = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.raises(err, match=match):
        pvae.fit(vae, torch.zeros(4, 3), progress=False, run_dir=tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (torch.full((4, 3), 2.0), r"data must lie in \[0, 1\] for a Bernoulli likelihood"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), "data contains 1 NaN or infinite values"),
        (torch.zeros(0, 3), "data is empty"),
    ],
)
def test_bad_data_is_rejected_before_anything_is_written(data, match, tmp_path):
    vae = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.raises(ValueError, match=match):
        pvae.fit(vae, data, progress=False, run_dir=tmp_path / "r", device="cpu")
    assert not (tmp_path / "r").exists()


def test_non_binary_data_with_bernoulli_warns():
    vae = pvae.VAE(pvae.priors.StandardNormal(2))
    with pytest.warns(UserWarning, match="not binary"):
        pvae.fit(vae, torch.full((4, 3), 0.5), epochs=1, progress=False, device="cpu")
