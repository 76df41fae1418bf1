"""Long-tailed digits: how class weighting changes what a classifier learns.

scikit-learn's bundled 8×8 digits (no download) are split into a balanced test
set and a training set subsampled to a long tail: class counts fall
geometrically from the most to the least frequent class, by a factor of
`--imbalance` (50 by default). A small MLP in plain JAX is trained with each
weighting scheme over `--repeats` seeds, the same seeds, batch order and
optimiser for every scheme; the script prints a Markdown table of balanced
accuracy, macro-F1 and the accuracy of the three rarest classes (mean ± std
over the seeds), and writes a PNG of per-class recall and training curves.

    python examples/long_tail.py                 # full run
    python examples/long_tail.py --quick         # a few seconds, for CI

Each scheme is one entry of `SCHEMES`: a function of the training labels that
returns the scheme's initial state (fixed class weights, or the online
estimator's state), and a loss of `(logits, labels, state)` that returns the
loss and the next state.
"""

import argparse
import dataclasses
import functools
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn import datasets, metrics
from tqdm.auto import tqdm

import jwxent

matplotlib.use("Agg")  # Files only, no display needed.
import matplotlib.pyplot as plt

NUM_CLASSES = 10
TEST_PER_CLASS = 74  # The smallest digit class has 174 images: 100 are left to train on.
RAREST = 3  # The table reports the accuracy of this many rarest classes.

Params = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Data:
    """A long-tailed training split and a balanced test split of the digits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.y_train, minlength=NUM_CLASSES)


def long_tail_counts(largest: int, imbalance: float) -> np.ndarray:
    """Per-rank counts falling geometrically from `largest` to `largest / imbalance`."""
    ranks = np.arange(NUM_CLASSES)
    counts = largest * imbalance ** (-ranks / (NUM_CLASSES - 1))
    return np.maximum(np.round(counts), 1).astype(np.int64)


def load_data(imbalance: float, seed: int) -> Data:
    """Balanced test split; training split subsampled to a long tail.

    Which digit is frequent and which is rare is a random permutation drawn
    from `seed`, so the result does not hinge on one digit being easy.
    """
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(NUM_CLASSES)]
    largest = min(len(idx) for idx in per_class) - TEST_PER_CLASS
    counts = long_tail_counts(largest, imbalance)[np.argsort(rng.permutation(NUM_CLASSES))]
    test = np.concatenate([idx[:TEST_PER_CLASS] for idx in per_class])
    train = np.concatenate(
        [idx[TEST_PER_CLASS : TEST_PER_CLASS + n] for idx, n in zip(per_class, counts, strict=True)]
    )
    return Data(x[train], y[train], x[test], y[test])


# ---------------------------------------------------------------------------
# Weighting schemes: one entry each.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A way to weight the loss.

    Attributes:
      name: the table's row label.
      recipe: the jwxent calls, for the table.
      init: training labels `[N]` -> the loss's initial state (e.g. class weights).
      loss: `(logits, labels, state) -> (scalar loss, new state)`, jittable.
    """

    name: str
    recipe: str
    init: Callable[[np.ndarray], Any]
    loss: LossFn


def _no_state(labels: np.ndarray) -> None:
    return None


def _unweighted(logits, labels, state):
    loss = jwxent.softmax_cross_entropy_with_integer_labels(logits, labels, reduction="mean")
    return loss, state


def _weights_from_counts(**options: Any) -> Callable[[np.ndarray], jax.Array]:
    """Fixed class weights from the training set's class counts."""

    def init(labels: np.ndarray) -> jax.Array:
        counts = jwxent.class_counts(jnp.asarray(labels), NUM_CLASSES)
        return jwxent.class_weights_from_counts(counts, **options)

    return init


def _class_weighted(reduction: jwxent.Reduction) -> LossFn:
    """Cross-entropy weighted by the fixed class weights held in the state."""

    def loss(logits, labels, class_weights):
        value = jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, class_weights=class_weights, reduction=reduction
        )
        return value, class_weights

    return loss


def _focal(logits, labels, state):
    """Down-weights easy examples, whatever their class; no class counts needed."""
    loss = jwxent.softmax_focal_loss_with_integer_labels(
        logits, labels, gamma=2.0, reduction="mean"
    )
    return loss, state


def _online_init(labels: np.ndarray) -> jwxent.ClassBalanceState:
    return jwxent.class_balance_init(NUM_CLASSES)  # Needs no counts up front.


def _online(logits, labels, state):
    """Class weights from a moving average of the batches' class frequencies."""
    state = jwxent.class_balance_update(state, labels, decay=0.99)
    class_weights = jwxent.class_balance_weights(state)  # 1/(C·f̂), mean one.
    loss = jwxent.softmax_cross_entropy_with_integer_labels(
        logits, labels, class_weights=class_weights, reduction="mean"
    )
    return loss, state


SCHEMES: tuple[Scheme, ...] = (
    Scheme("unweighted", '`reduction="mean"`', _no_state, _unweighted),
    Scheme(
        "inverse frequency",
        '`class_weights_from_counts(method="inverse")`, `reduction="weighted_mean"`',
        _weights_from_counts(method="inverse"),
        _class_weighted("weighted_mean"),
    ),
    Scheme(
        "balanced",
        '`class_weights_from_counts(method="balanced")`, `reduction="mean"`',
        _weights_from_counts(method="balanced"),
        _class_weighted("mean"),
    ),
    Scheme(
        "effective number",
        '`class_weights_from_counts(method="effective_number", beta=0.99, '
        'normalize="sum_to_num_classes")`, `reduction="mean"`',
        _weights_from_counts(method="effective_number", beta=0.99, normalize="sum_to_num_classes"),
        _class_weighted("mean"),
    ),
    Scheme(
        "focal loss",
        '`softmax_focal_loss_with_integer_labels(gamma=2.0)`, `reduction="mean"`',
        _no_state,
        _focal,
    ),
    Scheme(
        "online estimate",
        '`class_balance_update(decay=0.99)`, `class_balance_weights()`, `reduction="mean"`',
        _online_init,
        _online,
    ),
)


# ---------------------------------------------------------------------------
# Model and training.
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=1)
def init_mlp(key: jax.Array, sizes: Sequence[int]) -> Params:
    """He-initialised weights and zero biases of an MLP with layer `sizes`."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (key_i, fan_in, fan_out) in enumerate(zip(keys, sizes, sizes[1:], strict=False)):
        scale = np.sqrt(2.0 / fan_in).astype(np.float32)
        params[f"w{i}"] = scale * jax.random.normal(key_i, (fan_in, fan_out), jnp.float32)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """Logits of an MLP with ReLU hidden layers."""
    num_layers = len(params) // 2
    for i in range(num_layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"][None, :]  # Explicit batch axis.
        if i < num_layers - 1:
            x = jax.nn.relu(x)
    return x


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    """One jitted step: the scheme's loss, its gradient, the optax update."""

    def objective(params, state, x, y):
        return loss_fn(mlp(params, x), y, state)

    @jax.jit
    def train_step(params, opt_state, state, x, y):
        (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(params, state, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state, loss

    return train_step


@jax.jit
def predict(params: Params, x: jax.Array) -> jax.Array:
    return jnp.argmax(mlp(params, x), axis=-1)


@dataclasses.dataclass
class Run:
    """What one scheme's training produced, one row per repeat (seed)."""

    scheme: Scheme
    losses: np.ndarray  # [repeats, steps]
    eval_steps: np.ndarray  # [evals]
    eval_balanced_accuracy: np.ndarray  # [repeats, evals]
    recall: np.ndarray  # [repeats, classes], on the test split
    balanced_accuracy: np.ndarray  # [repeats]
    macro_f1: np.ndarray  # [repeats]
    rare_accuracy: np.ndarray  # [repeats], mean recall of the RAREST classes


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """`[steps, batch_size]` example indices: reshuffled epochs, the same for every scheme."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def per_class_recall(params: Params, data: Data) -> np.ndarray:
    """Recall of each class on the balanced test split (its mean is balanced accuracy)."""
    predicted = np.asarray(predict(params, jnp.asarray(data.x_test)))
    return metrics.recall_score(
        data.y_test, predicted, labels=range(NUM_CLASSES), average=None, zero_division=0
    )


def test_macro_f1(params: Params, data: Data) -> float:
    predicted = np.asarray(predict(params, jnp.asarray(data.x_test)))
    return float(metrics.f1_score(data.y_test, predicted, average="macro", zero_division=0))


def train(scheme: Scheme, data: Data, args: argparse.Namespace) -> Run:
    """Trains the MLP with `scheme` once per seed and evaluates it on the test split.

    Seed `r` fixes the initialisation and the batch order of repeat `r`, the
    same for every scheme, so schemes differ only in their loss.
    """
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(args.learning_rate, weight_decay=args.weight_decay),
    )
    train_step = make_train_step(scheme.loss, tx)  # Compiled once, reused by every seed.
    rare = np.argsort(data.train_counts, kind="stable")[:RAREST]
    eval_steps = np.arange(args.eval_every, args.steps + 1, args.eval_every)
    bar = tqdm(total=args.repeats * args.steps, desc=f"{scheme.name:>18}", disable=args.no_progress)
    losses, curves, recalls, macro_f1 = [], [], [], []
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        params = init_mlp(jax.random.key(seed), (64, args.hidden, NUM_CLASSES))
        opt_state = tx.init(params)
        state = scheme.init(data.y_train)
        step_losses, curve = [], []
        order = batch_order(len(data.y_train), args.steps, args.batch_size, seed)
        for step, batch in enumerate(order, start=1):
            # NumPy batches: one transfer per step, no eager gathers to dispatch.
            params, opt_state, state, loss = train_step(
                params, opt_state, state, data.x_train[batch], data.y_train[batch]
            )
            step_losses.append(loss)  # Kept on device; no sync per step.
            if step % args.eval_every == 0:
                curve.append(float(np.mean(per_class_recall(params, data))))
                bar.set_postfix(seed=seed, loss=f"{float(loss):.3f}", bal_acc=f"{curve[-1]:.3f}")
            bar.update()
        losses.append(np.asarray(jax.device_get(step_losses)))
        curves.append(curve)
        recalls.append(per_class_recall(params, data))
        macro_f1.append(test_macro_f1(params, data))
    bar.close()
    recall = np.stack(recalls)
    return Run(
        scheme=scheme,
        losses=np.stack(losses),
        eval_steps=eval_steps,
        eval_balanced_accuracy=np.asarray(curves),
        recall=recall,
        balanced_accuracy=recall.mean(axis=1),
        macro_f1=np.asarray(macro_f1),
        rare_accuracy=recall[:, rare].mean(axis=1),
    )


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def _mean_std(values: np.ndarray) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown_table(runs: Sequence[Run]) -> str:
    """The results as a Markdown table, one row per scheme, mean ± std over seeds."""
    lines = [
        f"| scheme | balanced accuracy | macro-F1 | rarest {RAREST} classes | jwxent call |",
        "| --- | :---: | :---: | :---: | --- |",
    ]
    for run in runs:
        cells = (run.balanced_accuracy, run.macro_f1, run.rare_accuracy)
        lines.append(
            f"| {run.scheme.name} | {' | '.join(map(_mean_std, cells))} | {run.scheme.recipe} |"
        )
    return "\n".join(lines)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter at the start), for readable loss curves."""
    cumulative = np.cumsum(np.asarray(values, np.float64))
    lagged = np.concatenate([np.zeros(window), cumulative[:-window]])[: len(values)]
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative - lagged) / counts


def plot(runs: Sequence[Run], data: Data, path: pathlib.Path) -> None:
    """Per-class recall (classes from most to least frequent) and training curves."""
    fig, (ax_recall, ax_loss, ax_bacc) = plt.subplots(1, 3, figsize=(17, 4.8))
    by_frequency = np.argsort(-data.train_counts, kind="stable")
    positions = np.arange(NUM_CLASSES)
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        offset = (i - (len(runs) - 1) / 2) * width
        recall = run.recall.mean(axis=0)[by_frequency]
        ax_recall.bar(positions + offset, recall, width, label=run.scheme.name)
        losses = run.losses.mean(axis=0)
        ax_loss.plot(np.arange(1, len(losses) + 1), smooth(losses, 25), label=run.scheme.name)
        curve = run.eval_balanced_accuracy.mean(axis=0)
        ax_bacc.plot(run.eval_steps, curve, marker=".", label=run.scheme.name)
    labels = [f"{c}\n(n={data.train_counts[c]})" for c in by_frequency]
    ax_recall.set_xticks(positions, labels, fontsize=8)
    ax_recall.set(title="Test recall per class", xlabel="digit (training count)", ylim=(0, 1.05))
    ax_loss.set(title="Training loss (each scheme's own objective)", xlabel="step", yscale="log")
    ax_bacc.set(title="Test balanced accuracy", xlabel="step")
    ax_bacc.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Mean over {len(runs[0].balanced_accuracy)} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imbalance", type=float, default=50.0, help="largest / smallest count")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32, help="hidden layer width")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=50, help="steps between test evals")
    parser.add_argument("--seed", type=int, default=0, help="data split and first run seed")
    parser.add_argument("--repeats", type=int, default=5, help="runs per scheme, seeds seed+r")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("long_tail_out"))
    parser.add_argument("--quick", action="store_true", help="a short run, for CI")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    if args.quick:
        args.steps, args.eval_every, args.repeats = 100, 25, 1
    return args


def main(argv: Sequence[str] | None = None) -> list[Run]:
    """Trains every scheme, prints the table, writes the PNG and the table to `--out`."""
    args = parse_args(argv)
    data = load_data(args.imbalance, args.seed)
    print(f"training counts per digit: {dict(enumerate(data.train_counts.tolist()))}")
    print(f"test: {len(data.y_test)} images, {TEST_PER_CLASS} per digit")
    start = time.perf_counter()
    runs = [train(scheme, data, args) for scheme in SCHEMES]
    seconds = time.perf_counter() - start
    table = markdown_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    plot(runs, data, args.out / "long_tail.png")
    print()
    print(table)
    print(
        f"\n{len(runs)} schemes × {args.repeats} seeds × {args.steps} steps in {seconds:.1f} s;"
        f" wrote {args.out}/"
    )
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
