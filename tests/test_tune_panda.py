"""Panda: one model babysat epoch by epoch, rolled back and adjusted when training goes wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from normax import tune


class LinearModel:
    """Least squares by full-batch gradient descent: diverges for lr above 2 / lambda_max."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(128, 4))
        self.y = self.X @ np.array([1.0, -2.0, 0.5, 3.0])
        self.state = {"w": np.zeros(4), "step": np.zeros((), dtype=np.int64)}
        self.starts = []  # (epoch, weights at the start of the epoch)

    def loss(self, pred=None):
        pred = self.X @ self.state["w"] if pred is None else pred
        return float(np.mean((pred - self.y) ** 2))

    def train_epoch(self, epoch, hp):
        self.starts.append((epoch, self.state["w"].copy()))
        for _ in range(5):
            g = 2 * self.X.T @ (self.X @ self.state["w"] - self.y) / len(self.y)
            self.state["w"] = self.state["w"] - hp["lr"] * g
            self.state["step"] = self.state["step"] + 1
        return self.loss()

    def runner(self, hparams, folder, **kwargs):
        save, load = tune.npz_checkpoint(lambda: self.state, self.state.update)
        return tune.PandaRunner(
            self.train_epoch,
            save,
            load,
            hparams,
            checkpoint_dir=folder,
            baseline=self.loss(),
            **kwargs,
        )


def test_divergence_is_rolled_back_and_lr_halved(tmp_path):
    m = LinearModel()
    runner = m.runner({"lr": 1.5, "other": 7}, tmp_path)
    res = runner.run(epochs=12)
    assert not res.gave_up and res.interventions
    lrs = [i.after["lr"] for i in res.interventions]
    assert lrs == [1.5 * 0.5 ** (k + 1) for k in range(len(lrs))]
    assert all(i.before["other"] == i.after["other"] == 7 for i in res.interventions)
    assert res.hparams["lr"] == lrs[-1] and res.best_loss < 1e-6 * m.loss(m.y * 0)
    assert sum(accepted for *_, accepted in res.history) == 12
    # after each rollback the retried epoch starts from the restored checkpoint exactly
    for i in res.interventions:
        retry = [w for e, w in m.starts if e == i.restored_epoch + 1]
        assert all(np.array_equal(w, retry[0]) for w in retry)
    logged = json.loads((tmp_path / "interventions.json").read_text())
    assert [row["after"]["lr"] for row in logged] == lrs
    assert sorted(os.listdir(tmp_path)) == ["interventions.json", "last_good.npz"]


def test_nan_and_user_rule_trigger_interventions(tmp_path):
    losses = iter([5.0, 4.0, float("nan"), 3.0, 2.9, 2.0, 1.0])
    state = {"v": np.zeros(2)}
    save, load = tune.npz_checkpoint(lambda: state, state.update)

    def epoch(e, hp):
        state["v"] = state["v"] + 1
        return next(losses)

    def plateau(e, loss, res):  # the user's rule: demand a 5% improvement
        return "plateau" if loss > 0.95 * res.best_loss else None

    runner = tune.PandaRunner(epoch, save, load, {"lr": 0.1}, checkpoint_dir=tmp_path, rule=plateau)
    res = runner.run(epochs=5)
    reasons = [i.reason for i in res.interventions]
    assert reasons == ["loss is nan", "plateau"]
    assert [i.epoch for i in res.interventions] == [3, 4]
    assert res.best_loss == 1.0 and res.hparams["lr"] == pytest.approx(0.025)
    assert state["v"].tolist() == [5.0, 5.0]  # two rolled-back epochs never counted


def test_gives_up_after_max_interventions_and_keeps_last_good_state(tmp_path):
    m = LinearModel()
    runner = m.runner({"lr": 1e6}, tmp_path, max_interventions=2, adjust=tune.halve("lr", 0.9))
    res = runner.run(epochs=3)
    assert res.gave_up and len(res.interventions) == 2
    assert np.array_equal(m.state["w"], np.zeros(4))  # restored to the initial checkpoint


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="blowup"):
        tune.PandaRunner(None, None, None, {}, checkpoint_dir=tmp_path, blowup=1.0)
    with pytest.raises(ValueError, match="factor"):
        tune.halve("lr", 2.0)
    with pytest.raises(ValueError, match="epochs"):
        LinearModel().runner({"lr": 0.1}, tmp_path).run(epochs=-1)


def test_babysits_a_normax_nn_model_with_its_checkpoints(tmp_path):
    nn = pytest.importorskip("normax.nn")
    optim = pytest.importorskip("normax.optim")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8))
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = nn.Sequential(
        nn.Linear(8, 16, bias=False, rng=0), nn.BatchNorm(16), nn.ReLU(), nn.Linear(16, 3, rng=1)
    )
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = optim.Adam(model.parameters(), lr=1e-2)

    def train_epoch(epoch, hp):
        opt.set_lr(hp["lr"])
        model.train()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward(), need_dx=False)
        opt.step(model.grads())
        return float(loss)

    def spike(epoch, loss, res):  # a user rule: pretend epoch 3 went wrong once
        return "spike" if epoch == 3 and not res.interventions else None

    save, load = tune.nn_checkpoint(model, opt)
    runner = tune.PandaRunner(
        train_epoch, save, load, {"lr": 1e-2}, checkpoint_dir=tmp_path, rule=spike
    )
    res = runner.run(epochs=6)
    assert [i.reason for i in res.interventions] == ["spike"]
    assert res.hparams["lr"] == 5e-3 and res.interventions[0].restored_epoch == 2
    assert res.best_loss < res.history[0][1]
