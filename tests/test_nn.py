"""normax.nn: backward passes by finite differences, training, modes, checkpoints, errors."""

from __future__ import annotations

import numpy as np
import pytest

import normax
from normax import nn, optim


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar f() with respect to every entry of x."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def _check_layer(layer, x, rng, rtol=1e-6, atol=1e-8):
    """Compare backward with finite differences of sum(w * layer(x)) for a fixed random w."""
    layer.train()
    w = rng.standard_normal(layer(x).shape)

    def f():
        return float(np.sum(w * layer(x)))

    f()
    dx = layer.backward(w)
    grads = {k: v.copy() for k, v in layer.grads().items()}
    np.testing.assert_allclose(dx, numgrad(f, x), rtol=rtol, atol=atol)
    for name, p in layer.parameters().items():
        np.testing.assert_allclose(grads[name], numgrad(f, p), rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)])
def test_linear_backward(bias, shape, rng):
    layer = nn.Linear(4, 3, bias=bias, dtype=np.float64, rng=1)
    _check_layer(layer, rng.standard_normal(shape), rng)
    assert ("bias" in layer.parameters()) == bias


def test_relu_backward(rng):
    x = rng.standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    _check_layer(nn.ReLU(), x, rng)


@pytest.mark.parametrize(
    ("shape", "axis"), [((8, 3), 1), ((4, 3, 2, 2), 1), ((4, 2, 3), -1), ((3, 10), 0)]
)
def test_batchnorm_backward(shape, axis, rng):
    layer = nn.BatchNorm(shape[axis], axis=axis, dtype=np.float64)
    layer.gamma[:] = rng.uniform(0.5, 1.5, layer.gamma.shape)
    layer.beta[:] = rng.standard_normal(layer.beta.shape)
    _check_layer(layer, rng.standard_normal(shape), rng, rtol=1e-5, atol=1e-7)


def _mlp(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(5, 8, bias=False, dtype=dtype, rng=rng),
        nn.BatchNorm(8, dtype=dtype),
        nn.ReLU(),
        nn.Linear(8, 3, dtype=dtype, rng=rng),
    )


def test_network_gradient_with_loss(rng):
    model = _mlp()
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((10, 5))
    y = rng.integers(0, 3, 10)

    def f():
        return loss_fn(model(x), y)

    f()
    dx = model.backward(loss_fn.backward())
    grads = {k: v.copy() for k, v in model.grads().items()}
    assert (
        set(grads)
        == set(model.parameters())
        == {"0.weight", "1.gamma", "1.beta", "3.weight", "3.bias"}
    )
    np.testing.assert_allclose(dx, numgrad(f, x), rtol=1e-5, atol=1e-8)
    for name, p in model.parameters().items():
        np.testing.assert_allclose(grads[name], numgrad(f, p), rtol=1e-5, atol=1e-8, err_msg=name)


def _blobs(rng, n=120):
    y = np.arange(n) % 3
    x = rng.standard_normal((n, 5)) + 2.0 * np.eye(3, 5)[y]
    return x.astype(np.float32), y


def _loss_curve(name, rng, steps=30):
    x, y = _blobs(rng)
    model = _mlp(np.float32)
    loss_fn = nn.SoftmaxCrossEntropy()
    lr = {"SGD": 0.3, "Momentum": 0.3, "RMSprop": 0.01}.get(name, 0.05)
    opt = getattr(optim, name)(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        losses.append(loss_fn(model(x), y))
        model.backward(loss_fn.backward(), need_dx=False)
        opt.step(model.grads())
    assert model.parameters()["0.weight"].dtype == np.float32
    return losses


@pytest.mark.parametrize("name", ["SGD", "Momentum", "RMSprop", "Adam", "AdamW"])
def test_loss_decreases(name, rng):
    losses = _loss_curve(name, rng)
    assert losses[-1] < 0.5 * losses[0]


def test_network_trains_the_same_on_every_backend(backend):
    losses = _loss_curve("Adam", np.random.default_rng(5))
    normax.set_backend("numpy")  # the fixture restores the backend afterwards
    reference = _loss_curve("Adam", np.random.default_rng(5))
    np.testing.assert_allclose(losses, reference, rtol=1e-3)
    assert losses[-1] < 0.5 * losses[0]


def test_train_and_eval_modes(rng):
    model = _mlp()
    bn = model[1]
    x = rng.standard_normal((16, 5)) * 3 + 1
    model(x)  # training: batch statistics, running averages move towards them
    assert not np.allclose(bn.running_mean, 0) and not np.allclose(bn.running_var, 1)
    mean, var = bn.running_mean.copy(), bn.running_var.copy()
    model.eval()
    assert not model.training and not bn.training
    full = model(x)
    one = model(x[:1])  # eval uses the running statistics: an example does not need its batch
    np.testing.assert_allclose(one, full[:1], rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, mean)  # eval leaves the statistics alone
    np.testing.assert_array_equal(bn.running_var, var)
    h = x @ model[0].weight
    expected = (h - mean) / np.sqrt(var + bn.eps) * bn.gamma + bn.beta
    np.testing.assert_allclose(bn(h), expected, rtol=1e-10)
    with pytest.raises(RuntimeError, match="needs a forward pass in training mode"):
        model.backward(np.ones((16, 3)))
    model.train()
    assert model.training and bn.training
    train_out = model(x)
    assert not np.allclose(train_out, full)


def test_layer_errors():
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        nn.Linear(0, 3)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        nn.Linear(2, 3, dtype=np.int32)
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 2\)"):
        nn.Linear(2, 3)(np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"layer 1 must be a normax\.nn\.Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)
    with pytest.raises(ValueError, match=r"momentum must be a finite number"):
        nn.BatchNorm(3, momentum=2.0)
    with pytest.raises(RuntimeError, match="needs a forward call first"):
        nn.SoftmaxCrossEntropy().backward()
    layer = nn.Linear(2, 3)
    layer(np.ones((4, 2)))
    with pytest.raises(ValueError, match="dy has shape"):
        layer.backward(np.ones((5, 3)))


# ---- checkpoints ---------------------------------------------------------------------------
def _batches(rng, steps):
    return [_blobs(rng, 24) for _ in range(steps)]


def _train(model, opt, batches):
    loss_fn = nn.SoftmaxCrossEntropy()
    for x, y in batches:
        model.train()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), need_dx=False)
        opt.step(model.grads())


def _adam(model):
    params = model.parameters()
    decay = {k: v for k, v in params.items() if k.endswith("weight")}
    rest = {k: v for k, v in params.items() if k not in decay}
    return optim.AdamW([{"params": decay}, {"params": rest, "weight_decay": 0.0}], lr=0.01)


def test_checkpoint_resume_is_bit_exact(rng, tmp_path, backend):
    batches = _batches(rng, 10)
    full = _mlp(np.float32, seed=3)
    opt = _adam(full)
    _train(full, opt, batches)

    first = _mlp(np.float32, seed=3)
    opt1 = _adam(first)
    _train(first, opt1, batches[:4])
    nn.save_checkpoint(tmp_path / "ck.npz", first, opt1)
    resumed = _mlp(np.float32, seed=99)  # different initial weights: all come from the file
    opt2 = _adam(resumed)
    nn.load_checkpoint(tmp_path / "ck.npz", resumed, opt2)
    _train(resumed, opt2, batches[4:])
    for store in ("parameters", "buffers"):
        a, b = getattr(full, store)(), getattr(resumed, store)()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _state(model, opt):
    return (
        {k: v.copy() for k, v in {**model.parameters(), **model.buffers()}.items()},
        opt.state_dict(),
    )


def _assert_same(model, opt, snap):
    for k, v in {**model.parameters(), **model.buffers()}.items():
        np.testing.assert_array_equal(v, snap[0][k])
    assert opt.steps == [g["step"] for g in snap[1]["param_groups"]]


def test_checkpoint_from_another_architecture_is_refused(rng, tmp_path):
    model = _mlp(np.float32)
    opt = _adam(model)
    _train(model, opt, _batches(rng, 2))
    nn.save_checkpoint(tmp_path / "ck.npz", model, opt)
    wider = nn.Sequential(
        nn.Linear(5, 9, bias=False, rng=0), nn.BatchNorm(9), nn.ReLU(), nn.Linear(9, 3, rng=0)
    )
    wopt = _adam(wider)
    snap = _state(wider, wopt)
    with pytest.raises(
        ValueError,
        match=r"param '0.weight' is \(5, 8\) float32 in the file, "
        r"\(5, 9\) float32 in the model",
    ):
        nn.load_checkpoint(tmp_path / "ck.npz", wider, wopt)
    _assert_same(wider, wopt, snap)
    deeper = nn.Sequential(*_mlp(np.float32).layers, nn.ReLU(), nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"params missing from the file \['5.bias', '5.weight'\]"):
        nn.load_checkpoint(tmp_path / "ck.npz", deeper)
    other = _mlp(np.float32)
    sgd = optim.SGD(other.parameters(), lr=0.1)
    snap = _state(other, sgd)
    with pytest.raises(ValueError, match="is for a AdamW optimizer, not SGD"):
        nn.load_checkpoint(tmp_path / "ck.npz", other, sgd)
    _assert_same(other, sgd, snap)


def test_checkpoint_without_optimizer_state(rng, tmp_path):
    model = _mlp(np.float32)
    nn.save_checkpoint(tmp_path / "m.npz", model)
    again = _mlp(np.float32, seed=5)
    nn.load_checkpoint(tmp_path / "m.npz", again)
    np.testing.assert_array_equal(again[0].weight, model[0].weight)
    with pytest.raises(ValueError, match="holds no optimizer state"):
        nn.load_checkpoint(tmp_path / "m.npz", again, _adam(again))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "npy"])
def test_damaged_checkpoint_is_refused_and_nothing_changes(damage, rng, tmp_path):
    model = _mlp(np.float32)
    opt = _adam(model)
    _train(model, opt, _batches(rng, 2))
    path = tmp_path / "ck.npz"
    nn.save_checkpoint(path, model, opt)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "flip":
        pos = data.find(model[0].weight.tobytes())
        bad = bytearray(data)
        bad[pos + 5] ^= 0x01
        path.write_bytes(bytes(bad))
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    else:
        with path.open("wb") as f:
            np.save(f, np.ones(3))  # a valid .npy, not an archive
    fresh = _mlp(np.float32, seed=7)
    fopt = _adam(fresh)
    snap = _state(fresh, fopt)
    with pytest.raises(ValueError, match=r"not a readable checkpoint|integrity check"):
        nn.load_checkpoint(path, fresh, fopt)
    _assert_same(fresh, fopt, snap)


def test_lazy_subpackages():
    assert normax.nn.Linear is nn.Linear and normax.optim.Adam is optim.Adam
    with pytest.raises(AttributeError):
        normax.no_such_thing  # noqa: B018
