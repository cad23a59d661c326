"""A full training script: a batch-normalized MLP on the handwritten digits, with checkpoints.

Trains with Adam (no weight decay on batch-norm parameters and biases, decoupled weight decay on
the weights), a cosine learning-rate schedule, saves a checkpoint every epoch, and can resume
from it exactly: run it, interrupt it, run it again with --resume.

    pip install "normax[examples]"
    python examples/train_mlp.py --epochs 20 --checkpoint /tmp/digits.npz
    python examples/train_mlp.py --epochs 30 --checkpoint /tmp/digits.npz --resume
"""

import argparse
import os

import numpy as np

from normax import nn, optim
from normax.nn.demo import build_model, load_digits_split, single_threaded_blas


def parameter_groups(model, weight_decay):
    params = model.parameters()
    weights = {k: v for k, v in params.items() if k.endswith("weight")}
    others = {k: v for k, v in params.items() if k not in weights}  # gamma, beta, biases
    return [{"params": weights}, {"params": others, "weight_decay": 0.0}]


def evaluate(model, x, y):
    model.eval()
    return float(np.mean(np.argmax(model(x), axis=1) == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--checkpoint", default="digits-checkpoint.npz")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    data = load_digits_split()
    rng = np.random.default_rng(0)
    model = build_model(64, 10, hidden=128, layers=2, rng=rng)
    opt = optim.AdamW(parameter_groups(model, 1e-4), lr=args.lr, weight_decay=1e-4)
    schedule = optim.cosine(args.lr, period=args.epochs)
    loss_fn = nn.SoftmaxCrossEntropy()
    start = 0
    if args.resume and os.path.exists(args.checkpoint):
        nn.load_checkpoint(args.checkpoint, model, opt)
        start = opt.steps[0] // (len(data.y_train) // args.batch_size)
        print(f"resumed from {args.checkpoint} at epoch {start}")

    for epoch in range(start, args.epochs):
        opt.set_lr(schedule(epoch))
        model.train()
        # the batch order depends only on the epoch, so a resumed run sees the same batches
        order = np.random.default_rng(epoch).permutation(len(data.y_train))
        total = 0.0
        for i in range(len(order) // args.batch_size):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            total += loss_fn(model(data.x_train[idx]), data.y_train[idx])
            model.backward(loss_fn.backward(), need_dx=False)
            opt.step(model.grads())
        nn.save_checkpoint(args.checkpoint, model, opt)
        acc = evaluate(model, data.x_test, data.y_test)
        print(f"epoch {epoch + 1:3d}: loss {total / (i + 1):.4f}, held-out {100 * acc:.1f}%")


if __name__ == "__main__":
    with single_threaded_blas():
        main()
