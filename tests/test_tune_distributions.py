"""Distributions sample their exact laws; samplers cover the space as documented."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from normax import tune

stats = pytest.importorskip("scipy.stats")

N = 20000

CONTINUOUS = [
    tune.uniform(-2.0, 3.0),
    tune.log_uniform(1e-4, 1.0),
    tune.ewa_beta(0.9, 0.999),
]


@pytest.mark.parametrize("dist", CONTINUOUS, ids=lambda d: d.kind)
def test_continuous_law_is_uniform_on_its_scale(dist, rng):
    x = dist.sample(rng, size=N)
    assert x.shape == (N,) and np.all((x >= dist.low) & (x <= dist.high))
    lo, hi = dist.scale_bounds
    assert stats.kstest(dist.to_scale(x), "uniform", args=(lo, hi - lo)).pvalue > 1e-3


def test_log_uniform_puts_a_quarter_in_each_decade(rng):
    x = tune.log_uniform(1e-4, 1.0).sample(rng, size=N)
    counts = np.histogram(x, bins=[1e-4, 1e-3, 1e-2, 1e-1, 1.0])[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert np.all(np.abs(counts / N - 0.25) < 0.02)


def test_ewa_beta_puts_half_in_0_9_to_0_99(rng):
    b = tune.ewa_beta(0.9, 0.999).sample(rng, size=N)
    assert abs(np.mean(b <= 0.99) - 0.5) < 0.02
    # the number of averaged steps 1 / (1 - beta) is log-uniform on [10, 1000]
    steps = 1.0 / (1.0 - b)
    assert stats.kstest(np.log10(steps), "uniform", args=(1.0, 2.0)).pvalue > 1e-3


def test_int_uniform_is_inclusive_and_even(rng):
    x = tune.int_uniform(2, 4).sample(rng, size=N)
    assert x.dtype == np.int64
    values, counts = np.unique(x, return_counts=True)
    assert values.tolist() == [2, 3, 4]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_int_log_uniform_law(rng):
    d = tune.int_log_uniform(16, 1024)
    x = d.sample(rng, size=N)
    k = np.arange(16, 1025)
    edges = np.log10(np.clip(np.r_[k - 0.5, 1024.5], 15.5, 1024.5))
    mass = np.diff(edges) / (edges[-1] - edges[0])
    octaves = [16, 32, 64, 128, 256, 512, 1025]
    observed = np.histogram(x, bins=octaves)[0]
    expected = np.array([mass[(k >= a) & (k < b)].sum() for a, b in itertools.pairwise(octaves)])
    assert stats.chisquare(observed, expected * N).pvalue > 1e-3


def test_choice_is_even(rng):
    d = tune.choice(["relu", "tanh", 3, None])
    x = d.sample(rng, size=N)
    counts = [int(np.sum(x == o)) if o is not None else int(np.sum(x == None)) for o in d.options]  # noqa: E711
    assert sum(counts) == N and stats.chisquare(counts).pvalue > 1e-3
    assert d.sample(rng) in d.options


@pytest.mark.parametrize(
    "dist",
    [
        *CONTINUOUS,
        tune.int_uniform(2, 4),
        tune.int_log_uniform(16, 1024),
        tune.choice(["a", "b", "c"]),
    ],
    ids=lambda d: d.kind,
)
def test_scalar_sample_is_json_ready_and_round_trips(dist, rng):
    v = dist.sample(rng)
    assert type(v) in (float, int, str)
    assert dist.from_scale(dist.to_scale(v)) == v
    assert tune.distributions.distribution_from_json(dist.to_json()) == dist


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: tune.uniform(1.0, 1.0), "low < high"),
        (lambda: tune.uniform(0.0, math.inf), "finite"),
        (lambda: tune.log_uniform(0.0, 1.0), "positive"),
        (lambda: tune.log_uniform(1.0, 0.1), "low < high"),
        (lambda: tune.int_uniform(4, 2), "low < high"),
        (lambda: tune.int_uniform(1.5, 3), "integer"),
        (lambda: tune.int_log_uniform(0, 8), "positive"),
        (lambda: tune.ewa_beta(0.9, 1.0), r"\(0, 1\)"),
        (lambda: tune.ewa_beta(0.99, 0.9), "low < high"),
        (lambda: tune.choice([]), "empty"),
        (lambda: tune.choice([1, 1]), "distinct"),
    ],
)
def test_bad_bounds_raise_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="low"):
        tune.uniform("a", 1.0)
    with pytest.raises(TypeError, match="option"):
        tune.choice([object()])


SPACE2 = {"x": tune.uniform(0.0, 1.0), "y": tune.uniform(0.0, 1.0)}


def _distinct_x(sampler, n=25):
    study = tune.Study(SPACE2, lambda p: (p["x"] - 0.4) ** 2, sampler=sampler)
    study.optimize(n)
    return len({t.params["x"] for t in study.trials})


def test_random_tries_25_values_where_a_grid_tries_5():
    # the objective depends on x only: a 5 x 5 grid spends 25 trials on 5 values of it
    assert _distinct_x(tune.RandomSampler(seed=0)) == 25
    assert _distinct_x(tune.GridSampler(points_per_axis=5)) == 5


def test_grid_refuses_more_points_than_it_has():
    study = tune.Study(SPACE2, lambda p: p["x"], sampler=tune.GridSampler(3))
    with pytest.raises(ValueError, match="grid has 9 points"):
        study.optimize(10)
    assert study.trials == []


def test_grid_keeps_distinct_integer_values():
    g = tune.GridSampler(points_per_axis=5)
    space = {"layers": tune.int_uniform(2, 4), "act": tune.choice(["relu", "tanh"])}
    axes = g.axes(space, {k: d.scale_bounds for k, d in space.items()})
    assert axes == [[2, 3, 4], ["relu", "tanh"]]


@pytest.mark.parametrize("make", [tune.SobolSampler, tune.HaltonSampler])
def test_quasi_random_samplers_fill_the_cube_evenly(make):
    space = {"x": tune.uniform(0.0, 1.0), "y": tune.log_uniform(1e-3, 1.0)}
    box = {k: d.scale_bounds for k, d in space.items()}
    s = make(seed=3)
    pts = [s.sample(space, box, i, i) for i in range(64)]
    x = np.array([p["x"] for p in pts])
    y = np.log10([p["y"] for p in pts])
    # a 4 x 4 grid of cells gets 4 points each (Sobol exactly; Halton within 1)
    cells = np.histogram2d(x, y, bins=4, range=[[0, 1], [-3, 0]])[0]
    assert np.all(np.abs(cells - 4) <= 1)
    again = make(seed=3)
    assert again.sample(space, box, 17, 17) == pts[17]


def test_random_sampler_depends_only_on_seed_and_number():
    space = {"lr": tune.log_uniform(1e-4, 1.0)}
    box = {"lr": space["lr"].scale_bounds}
    a, b = tune.RandomSampler(5), tune.RandomSampler(5)
    seq = [a.sample(space, box, n, n) for n in range(10)]
    assert [b.sample(space, box, n, 0) for n in reversed(range(10))] == seq[::-1]
    assert tune.RandomSampler(6).sample(space, box, 0, 0) != seq[0]
    with pytest.raises(ValueError, match="seed"):
        tune.RandomSampler(-1)
