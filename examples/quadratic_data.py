"""The same cost with its coefficients fed as data: J(w) = x[0]*w**2 + x[1]*w + x[2].

The coefficients x = [1, -10, 25] arrive with every step, as a training batch would; the
gradient 2*x[0]*w + x[1] is computed from them. Any optimizer then finds w = 5.

    python examples/quadratic_data.py
"""

import numpy as np

from normax import optim

coefficients = np.array([1.0, -10.0, 25.0])


def cost_and_grad(w, x):
    return x[0] * w**2 + x[1] * w + x[2], 2 * x[0] * w + x[1]


if __name__ == "__main__":
    params = {"w": np.zeros(1)}
    opt = optim.Adam(params, lr=0.1)
    for step in range(1, 1001):
        x = coefficients  # the data of this step
        cost, grad = cost_and_grad(params["w"], x)
        opt.step({"w": grad})
        if step in (1, 10, 100, 1000):
            print(f"step {step:4d}: w = {params['w'][0]:.6f}, cost = {cost[0]:.3e}")
    assert abs(params["w"][0] - 5) < 1e-3
