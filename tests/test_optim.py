"""normax.optim without torch: hand-derived steps, formulas, convergence, structures, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import normax
from normax import optim

ALL = ["SGD", "Momentum", "RMSprop", "Adam", "AdamW"]


# ---- hand-derived steps --------------------------------------------------------------------
def test_sgd_first_momentum_step_is_the_gradient_without_dampening(backend):
    p = np.array([1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    opt.step([np.array([2.0])])  # buf = g = 2 on the first step, not (1 - 0.5) * g
    assert p[0] == pytest.approx(1.0 - 0.1 * 2.0, abs=1e-15)
    opt.step([np.array([2.0])])  # buf = 0.9 * 2 + 0.5 * 2 = 2.8
    assert p[0] == pytest.approx(0.8 - 0.1 * 2.8, abs=1e-15)
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], [2.8])


def test_sgd_nesterov_and_weight_decay_by_hand(backend):
    p = np.array([1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.2)
    opt.step([np.array([1.0])])  # d = 1 + 0.2 = 1.2; buf = 1.2; d = 1.2 + 0.5 * 1.2 = 1.8
    assert p[0] == pytest.approx(1.0 - 0.18, abs=1e-15)


def test_rmsprop_first_step_by_hand(backend):
    p = np.array([1.0])
    optim.RMSprop([p], lr=0.01, eps=0.0).step([np.array([2.0])])
    # sq = 0.01 * 4 = 0.04, avg = 0.2, p -= 0.01 * 2 / 0.2
    assert p[0] == pytest.approx(0.9, abs=1e-15)


def test_rmsprop_centered_first_step_by_hand(backend):
    p = np.array([1.0])
    optim.RMSprop([p], lr=0.01, alpha=0.5, eps=0.0, centered=True).step([np.array([2.0])])
    # sq = 0.5 * 4 = 2, ga = 0.5 * 2 = 1, avg = sqrt(2 - 1) = 1, p -= 0.01 * 2
    assert p[0] == pytest.approx(0.98, abs=1e-15)


def test_adam_first_step_moves_by_lr_times_sign(backend):
    p = np.array([1.0, 1.0])
    optim.Adam([p], lr=0.1, eps=0.0).step([np.array([2.0, -3e-4])])
    # m_hat = g and v_hat = g**2 after bias correction: p -= lr * g / |g|
    np.testing.assert_allclose(p, [0.9, 1.1], rtol=1e-14)


def test_adamw_decays_before_the_adam_step(backend):
    p = np.array([2.0])
    optim.AdamW([p], lr=0.1, weight_decay=0.5, eps=0.0).step([np.array([1.0])])
    assert p[0] == pytest.approx(2.0 * (1 - 0.05) - 0.1, abs=1e-14)
    q = np.array([2.0])
    optim.Adam([q], lr=0.1, weight_decay=0.5, eps=0.0).step([np.array([1.0])])
    assert q[0] == pytest.approx(2.0 - 0.1, abs=1e-14)  # L2 only changes the gradient's size


def test_amsgrad_uses_the_running_maximum(backend):
    p = np.array([0.0])
    opt = optim.Adam([p], lr=0.1, betas=(0.0, 0.5), eps=0.0, amsgrad=True)
    opt.step([np.array([4.0])])  # v = 0.5 * 16 = 8
    opt.step([np.array([1.0])])  # v = 0.5 * 8 + 0.5 * 1 = 4.5 < 8: the maximum stays 8
    np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], [4.5])
    np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"], [8.0])
    opt.step([np.array([5.0])])  # v = 2.25 + 12.5 = 14.75 > 8
    np.testing.assert_array_equal(opt.state[0]["max_exp_avg_sq"], [14.75])


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_matches_its_formula(bias_correction, backend, rng):
    w = rng.standard_normal((4, 3))
    ref = w.copy()
    v = np.zeros_like(w)
    lr, beta = 0.05, 0.8
    opt = optim.Momentum({"w": w}, lr=lr, beta=beta, bias_correction=bias_correction)
    for t in range(1, 21):
        g = rng.standard_normal(w.shape)
        v = beta * v + (1 - beta) * g
        ref -= lr * (v / (1 - beta**t) if bias_correction else v)
        opt.step({"w": g})
    np.testing.assert_allclose(w, ref, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(opt.state[0]["velocity"], v, rtol=1e-13, atol=1e-14)


# ---- convergence ---------------------------------------------------------------------------
def _make(name, params, problem):
    lrs = {
        "quadratic": dict(SGD=0.1, Momentum=0.1, RMSprop=0.01, Adam=0.1, AdamW=0.1),
        "rosenbrock": dict(SGD=1e-3, Momentum=1e-2, RMSprop=1e-3, Adam=1e-2, AdamW=1e-2),
    }
    opts = {
        "SGD": dict(momentum=0.9),
        "RMSprop": dict(momentum=0.9),
        "AdamW": dict(weight_decay=0.0),
    }.get(name, {})
    return getattr(optim, name)(params, lr=lrs[problem][name], **opts)


@pytest.mark.parametrize("name", ALL)
def test_converges_on_the_course_quadratic(name):
    w = np.array([0.0])  # J(w) = w**2 - 10 w + 25, minimum at w = 5
    opt = _make(name, [w], "quadratic")
    for _ in range(3000):
        opt.step([2 * w - 10])
    assert w[0] == pytest.approx(5.0, abs=2e-3)


@pytest.mark.parametrize("name", ALL)
def test_converges_on_rosenbrock(name):
    w = np.array([-1.5, 2.0])
    opt = _make(name, [w], "rosenbrock")
    for _ in range(8000):
        x, y = w
        opt.step([np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])])
    np.testing.assert_allclose(w, [1.0, 1.0], atol=2e-3)


# ---- structures and groups -----------------------------------------------------------------
def test_parameter_groups_have_their_own_options(backend):
    w, b = np.ones(3), np.ones(2)
    opt = optim.SGD(
        [{"params": {"w": w}}, {"params": {"b": b}, "lr": 0.5}], lr=0.1, weight_decay=1.0
    )
    opt.step({"w": np.zeros(3), "b": np.zeros(2)})  # one flat dict for dict-based groups
    np.testing.assert_allclose(w, 0.9)
    np.testing.assert_allclose(b, 0.5)
    opt.step([{"w": np.zeros(3)}, {"b": np.zeros(2)}])  # or one structure per group
    np.testing.assert_allclose(w, 0.81)
    assert opt.steps == [2, 2]


def test_list_groups_and_mixed_dtypes(backend):
    a, b, c = np.ones(3), np.ones(4, np.float32), np.ones(2)
    opt = optim.Adam([{"params": [a, b]}, {"params": [c], "lr": 0.0}], lr=0.1)
    opt.step([[np.ones(3), np.ones(4, np.float32)], [np.ones(2)]])
    np.testing.assert_allclose(a, 0.9)
    np.testing.assert_allclose(b, 0.9, rtol=1e-6)
    assert b.dtype == np.float32 and opt.state[1]["exp_avg"].dtype == np.float32
    np.testing.assert_array_equal(c, 1.0)


def test_set_lr_with_a_schedule(backend):
    w = np.array([1.0])
    opt = optim.SGD([w], lr=1.0)
    sched = optim.step_decay(1.0, every=2, gamma=0.5)
    for epoch in range(4):
        opt.set_lr(sched(epoch))
        opt.step([np.array([1.0])])
    assert w[0] == pytest.approx(1 - (1 + 1 + 0.5 + 0.5))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.set_lr(-0.1)


def test_schedules():
    assert optim.step_decay(0.1, every=10)(9) == 0.1
    assert optim.step_decay(0.1, every=10, gamma=0.5)(10) == 0.05
    assert optim.exponential(2.0, gamma=0.5)(2) == 0.5
    assert optim.inverse_time(0.2, decay=1.0)(3) == pytest.approx(0.05)
    c = optim.cosine(1.0, period=4, lr_min=0.2)
    assert [c(0), c(2), c(4), c(9)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="step or epoch must be >= 0"):
        optim.exponential(1.0, 0.5)(-1)
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        optim.step_decay(0.1, every=0)
    with pytest.raises(ValueError, match="lr0 must be a finite number >= 0"):
        optim.cosine(-1.0, period=3)
    with pytest.raises(TypeError, match="takes an int"):
        optim.cosine(1.0, period=3)(1.5)


# ---- bad input: clear errors, nothing modified ---------------------------------------------
def _snapshot(opt, params):
    return [p.copy() for p in params], [{k: a.copy() for k, a in s.items()} for s in opt.state]


def _unchanged(opt, params, snap):
    for p, q in zip(params, snap[0], strict=True):
        np.testing.assert_array_equal(p, q)
    assert [sorted(s) for s in opt.state] == [sorted(s) for s in snap[1]]
    for s, t in zip(opt.state, snap[1], strict=True):
        for k in s:
            np.testing.assert_array_equal(s[k], t[k])


BAD_GRADS = [
    ({"w": np.ones((2, 3))}, ValueError, r"keys do not match params: missing \['b'\]"),
    ({"w": np.ones((2, 3)), "b": np.ones(3), "c": np.ones(1)}, ValueError, r"unexpected \['c'\]"),
    ({"w": np.ones((3, 2)), "b": np.ones(3)}, ValueError, r"grads\['w'\] has shape \(3, 2\)"),
    ({"w": np.ones((2, 3), np.float32), "b": np.ones(3)}, TypeError, "has dtype float32"),
    ({"w": [[1.0] * 3] * 2, "b": np.ones(3)}, TypeError, r"grads\['w'\] must be a numpy array"),
    ([np.ones((2, 3)), np.ones(3)], TypeError, "must be a dict with the keys of params"),
    (np.ones(3), TypeError, "must be a list or dict"),
]


@pytest.mark.parametrize(("grads", "exc", "match"), BAD_GRADS)
@pytest.mark.parametrize("name", ALL)
def test_bad_grads_raise_and_modify_nothing(name, grads, exc, match, backend):
    params = {"w": np.ones((2, 3)), "b": np.ones(3)}
    opt = getattr(optim, name)(params, lr=0.1)
    opt.step({"w": np.ones((2, 3)), "b": np.ones(3)})
    snap = _snapshot(opt, list(params.values()))
    with pytest.raises(exc, match=match):
        opt.step(grads)
    _unchanged(opt, list(params.values()), snap)


def test_list_grads_length_mismatch():
    opt = optim.SGD([np.ones(2), np.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match="grads has 1 arrays, params has 2"):
        opt.step([np.ones(2)])
    with pytest.raises(TypeError, match="must be a list like params"):
        opt.step({"a": np.ones(2)})


@pytest.mark.parametrize(
    ("name", "opts", "match"),
    [
        ("SGD", dict(lr=-0.1), "lr must be a finite number >= 0, got -0.1"),
        ("SGD", dict(lr=float("nan")), "lr must be a finite number >= 0"),
        ("SGD", dict(lr="0.1"), "lr must be a real number"),
        ("SGD", dict(momentum=-1), "momentum must be a finite number >= 0"),
        ("SGD", dict(nesterov=True), "nesterov needs momentum > 0 and dampening == 0"),
        ("SGD", dict(momentum=0.9, dampening=0.1, nesterov=True), "nesterov needs"),
        ("Momentum", dict(beta=1.0), r"beta must be in \[0, 1\), got 1.0"),
        ("RMSprop", dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
        ("RMSprop", dict(eps=-1e-8), "eps must be a finite number >= 0"),
        ("Adam", dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1.0"),
        ("Adam", dict(betas=(-0.1, 0.9)), r"betas\[0\] must be a finite number >= 0"),
        ("Adam", dict(betas=0.9), "betas must be a pair"),
        ("AdamW", dict(weight_decay=-0.01), "weight_decay must be a finite number >= 0"),
        ("Adam", dict(amsgrad=1), "amsgrad must be True or False"),
    ],
)
def test_bad_hyperparameters(name, opts, match):
    with pytest.raises((ValueError, TypeError), match=match):
        getattr(optim, name)([np.ones(2)], **opts)


def test_bad_hyperparameter_set_later_is_caught_before_any_update():
    a, b = np.ones(2), np.ones(2)
    opt = optim.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    opt.param_groups[1]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: betas\[1\] must be in"):
        opt.step([[np.ones(2)], [np.ones(2)]])
    np.testing.assert_array_equal(a, 1.0)  # group 0 was not stepped either
    assert opt.steps == [0, 0] and opt.state == [{}, {}]


@pytest.mark.parametrize(
    ("params", "exc", "match"),
    [
        ([], ValueError, "holds no parameters"),
        (np.ones(3), TypeError, "not a single array"),
        ([np.ones(3, np.int64)], TypeError, "unsupported dtype int64"),
        ([np.ones((3, 4))[:, ::2]], ValueError, "must be C-contiguous"),
        ([[1.0, 2.0]], TypeError, "must be a numpy array"),
        (
            [{"params": [np.ones(2)], "momentun": 0.9}],
            ValueError,
            r"unknown options \['momentun'\]",
        ),
    ],
)
def test_bad_params(params, exc, match):
    with pytest.raises(exc, match=match):
        optim.SGD(params, lr=0.1)


def test_shared_or_read_only_params_are_refused():
    w = np.ones(6)
    with pytest.raises(ValueError, match="share memory"):
        optim.SGD([w[:4], w[3:]], lr=0.1)
    with pytest.raises(ValueError, match="share memory"):
        optim.SGD({"a": w, "b": w}, lr=0.1)
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        optim.SGD([ro], lr=0.1)


def test_non_contiguous_gradient_is_accepted(backend):
    w = np.ones(3)
    g = np.arange(6.0)[::2]
    optim.SGD([w], lr=0.5).step([g])
    np.testing.assert_array_equal(w, [1.0, 0.0, -1.0])


# ---- state save / load ---------------------------------------------------------------------
CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Momentum", dict(lr=0.05, bias_correction=True)),
    ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.9))),
]


def _run(opt, params, grads):
    for g in grads:
        opt.step({k: gi + 0.1 * params[k] for k, gi in g.items()})


@pytest.mark.parametrize(("name", "opts"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_resume_from_file_is_bit_exact(name, opts, backend, rng, tmp_path):
    shapes = {"w": (5, 4), "b": (4,)}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(12)]
    start = {k: rng.standard_normal(s) for k, s in shapes.items()}
    full = {k: v.copy() for k, v in start.items()}
    opt = getattr(optim, name)(full, **opts)
    _run(opt, full, grads)
    half = {k: v.copy() for k, v in start.items()}
    opt1 = getattr(optim, name)(half, **opts)
    _run(opt1, half, grads[:5])
    opt1.save(tmp_path / "opt.npz")
    resumed = {k: v.copy() for k, v in half.items()}
    opt2 = getattr(optim, name)(resumed, lr=123.0)  # hyperparameters come from the file
    opt2.load(tmp_path / "opt.npz")
    assert opt2.param_groups[0] == {**opt1.param_groups[0], "params": resumed}
    _run(opt2, resumed, grads[5:])
    for k in shapes:
        np.testing.assert_array_equal(resumed[k], full[k])


def test_state_dict_is_a_snapshot_and_roundtrips():
    w = np.ones(3)
    opt = optim.Adam([w], lr=0.1)
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    assert sd["param_groups"][0]["step"] == 1 and sd["param_groups"][0]["params"] == [0]
    opt.step([np.ones(3)])
    assert sd["state"][0]["exp_avg"][0] == pytest.approx(0.1)
    opt.load_state_dict(sd)
    assert opt.steps == [1]


def test_load_refuses_mismatches_and_changes_nothing(tmp_path):
    w = np.ones(3)
    opt = optim.Adam([w], lr=0.1)
    opt.step([np.ones(3)])
    opt.save(tmp_path / "a.npz")
    other = optim.Adam([np.ones(4)], lr=0.2)
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\] is \(\(3,\), dtype"):
        other.load(tmp_path / "a.npz")
    assert other.state == [{}] and other.param_groups[0]["lr"] == 0.2
    with pytest.raises(ValueError, match="is for a Adam optimizer, not SGD"):
        optim.SGD([np.ones(3)], lr=0.1).load(tmp_path / "a.npz")
    with pytest.raises(ValueError, match="holds parameters"):
        optim.Adam([np.ones(3), np.ones(1)]).load(tmp_path / "a.npz")
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.1


def test_truncated_or_tampered_file_is_refused(tmp_path):
    w = np.ones(3)
    opt = optim.Adam([w], lr=0.1)
    opt.step([np.ones(3)])
    path = tmp_path / "a.npz"
    opt.save(path)
    data = path.read_bytes()
    fresh = optim.Adam([np.ones(3)], lr=0.3)
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        fresh.load(tmp_path / "cut.npz")
    # flip one byte of a stored array: the digest no longer matches
    raw = np.frombuffer(opt.state[0]["exp_avg"].tobytes(), np.uint8)
    pos = data.find(raw.tobytes())
    assert pos > 0
    bad = bytearray(data)
    bad[pos] ^= 0x40
    (tmp_path / "bad.npz").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"truncated or corrupted|integrity check"):
        fresh.load(tmp_path / "bad.npz")
    assert fresh.state == [{}] and fresh.param_groups[0]["lr"] == 0.3


def test_failed_save_leaves_the_old_file(tmp_path, monkeypatch):
    w = np.ones(3)
    opt = optim.SGD([w], lr=0.1, momentum=0.9)
    path = tmp_path / "s.npz"
    opt.save(path)
    before = path.read_bytes()
    opt.step([np.ones(3)])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        opt.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file left


def test_repr_and_lazy_import():
    assert "Adam(1 arrays" in repr(normax.optim.Adam([np.ones(1)]))
    assert math.isclose(normax.optim.Adam([np.ones(1)]).defaults["lr"], 1e-3)


@pytest.mark.parametrize("script", ["quadratic.py", "quadratic_data.py"])
def test_examples_reach_w_equals_5(script):
    import pathlib
    import runpy

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / script
    if not path.exists():
        pytest.skip("examples/ is not part of this installation")
    runpy.run_path(str(path), run_name="__main__")  # each asserts |w - 5| < 1e-3


@pytest.mark.parametrize(
    "module",
    [
        "normax.optim",
        "normax.optim._optimizers",
        "normax.optim.schedules",
        "normax.nn",
        "normax.nn._layers",
        "normax.nn._loss",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
