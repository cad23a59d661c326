"""Minimize the course notes' cost J(w) = w**2 - 10*w + 25 = (w - 5)**2 with every optimizer.

Each optimizer starts at w = 0 and follows the gradient dJ/dw = 2*w - 10 until w = 5.

    python examples/quadratic.py
"""

import numpy as np

from normax import optim

OPTIMIZERS = {
    "SGD": lambda w: optim.SGD([w], lr=0.1),
    "SGD + Nesterov": lambda w: optim.SGD([w], lr=0.05, momentum=0.9, nesterov=True),
    "Momentum": lambda w: optim.Momentum([w], lr=0.1, beta=0.9, bias_correction=True),
    "RMSprop": lambda w: optim.RMSprop([w], lr=0.01),
    "Adam": lambda w: optim.Adam([w], lr=0.1),
    "AdamW": lambda w: optim.AdamW([w], lr=0.1, weight_decay=0.0),
}


def cost(w):
    return w**2 - 10 * w + 25


def minimize(make, steps=2000):
    w = np.zeros(1)  # the parameter, updated in place by the optimizer
    opt = make(w)
    for _ in range(steps):
        opt.step([2 * w - 10])
    return float(w[0])


if __name__ == "__main__":
    for name, make in OPTIMIZERS.items():
        w = minimize(make)
        print(f"{name:15s} w = {w:.6f}   J(w) = {cost(w):.2e}")
        assert abs(w - 5) < 1e-3, name
