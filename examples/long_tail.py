"""Long-tailed classification: how re-weighting, logit adjustment and margins change a classifier.

Two data sets, both without a download, each split into a balanced test set and
a training set subsampled to a long tail (class counts fall geometrically from
the most to the least frequent class, by a factor of `--imbalance`):

* `digits` (default): scikit-learn's bundled 8×8 digits, 10 classes;
* `gaussian`: a synthetic mixture of 50 overlapping Gaussian classes in 32
  dimensions, drawn from `--seed`, where the prior decides many test points.

A small MLP in plain JAX is trained with each scheme over `--repeats` seeds,
the same seeds, batch order and optimiser for every scheme; the script prints a
Markdown table of balanced accuracy, macro-F1 and the recall of the rarest 30%
of the classes (mean ± std over the seeds), and writes a PNG of per-class
recall and training curves.

    python examples/long_tail.py                                    # digits, imbalance 50
    python examples/long_tail.py --imbalance 100 --dataset gaussian # the harder setting
    python examples/long_tail.py --quick                            # a few seconds, for CI

Each scheme is one entry of `SCHEMES`: a `build` function of the training
counts and the number of steps that returns the scheme's initial state and its
loss of `(logits, labels, state)`, and optionally an `adjust` function applied
to the logits at prediction time. Schemes with the same `build` share their
training runs (post-hoc adjustment re-reads the unweighted model).
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

RAREST_FRACTION = 0.3  # The table reports the recall of this fraction of rarest classes.

Params = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
Adjust = Callable[[jax.Array, np.ndarray], jax.Array]


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Data:
    """A long-tailed training split and a balanced test split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def train_counts(self) -> np.ndarray:
        return np.bincount(self.y_train, minlength=self.num_classes)

    @property
    def rarest(self) -> np.ndarray:
        """The rarest `RAREST_FRACTION` of the classes (at least one)."""
        count = max(1, round(RAREST_FRACTION * self.num_classes))
        return np.argsort(self.train_counts, kind="stable")[:count]


def long_tail_counts(largest: int, imbalance: float, num_classes: int) -> np.ndarray:
    """Per-rank counts falling geometrically from `largest` to `largest / imbalance`."""
    ranks = np.arange(num_classes)
    counts = largest * imbalance ** (-ranks / (num_classes - 1))
    return np.maximum(np.round(counts), 1).astype(np.int64)


def long_tail_split(
    x: np.ndarray, y: np.ndarray, largest: int, imbalance: float, seed: int
) -> Data:
    """A balanced test split, and a long-tailed training split of at most `largest` per class.

    Each class keeps the same number of examples to test (as many as the
    smallest class can spare after `largest`); which class is frequent and
    which is rare is a random permutation drawn from `seed`, so the result
    does not hinge on one class being easy.
    """
    num_classes = int(y.max()) + 1
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    test_per_class = min(len(idx) for idx in per_class) - largest
    ranked = long_tail_counts(largest, imbalance, num_classes)
    counts = ranked[np.argsort(rng.permutation(num_classes))]
    test = np.concatenate([idx[:test_per_class] for idx in per_class])
    train = np.concatenate(
        [idx[test_per_class : test_per_class + n] for idx, n in zip(per_class, counts, strict=True)]
    )
    return Data(x[train], y[train], x[test], y[test], num_classes)


def load_digits(imbalance: float, seed: int) -> Data:
    """The digits: 74 test images per digit, and a long tail from 100 training images down.

    The smallest digit class has 174 images: 74 to test, up to 100 to train.
    """
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return long_tail_split(x, y, largest=100, imbalance=imbalance, seed=seed)


def load_gaussian(imbalance: float, seed: int) -> Data:
    """50 Gaussian classes in 32 dimensions: 40 test points each, 400 training points down.

    Class means are standard normal, scaled by 0.6 so that neighbouring
    classes overlap; each class is an isotropic unit Gaussian around its mean.
    Drawn from `seed`, no download.
    """
    num_classes, dim, per_class, largest = 50, 32, 440, 400
    rng = np.random.default_rng(seed)
    means = 0.6 * rng.standard_normal((num_classes, dim))
    y = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    x = (means[y] + rng.standard_normal((len(y), dim))).astype(np.float32)
    return long_tail_split(x, y, largest=largest, imbalance=imbalance, seed=seed)


DATASETS: dict[str, Callable[[float, int], Data]] = {
    "digits": load_digits,
    "gaussian": load_gaussian,
}


# ---------------------------------------------------------------------------
# Schemes: one entry each.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scheme:
    """A way to train (and predict).

    Attributes:
      name: the table's row label.
      recipe: the jwxent calls, for the table.
      build: `(training counts [C], number of steps) -> (initial state, loss)`,
        with `loss(logits, labels, state) -> (scalar loss, new state)`, jittable.
        The state holds what the loss needs (class weights, offsets, a step
        count), so that a train step compiles once and serves every seed.
      adjust: `(logits, training counts) -> logits` at prediction time, or None.
    """

    name: str
    recipe: str
    build: Callable[[np.ndarray, int], tuple[Any, LossFn]]
    adjust: Adjust | None = None


def _unweighted(counts: np.ndarray, steps: int) -> tuple[None, LossFn]:
    def loss(logits, labels, state):
        value = jwxent.softmax_cross_entropy_with_integer_labels(logits, labels, reduction="mean")
        return value, state

    return None, loss


@functools.cache
def _class_weighted_loss(reduction: jwxent.Reduction) -> LossFn:
    """Cross-entropy weighted by the class weights in the state (one function per reduction)."""

    def loss(logits, labels, class_weights):
        value = jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, class_weights=class_weights, reduction=reduction
        )
        return value, class_weights

    return loss


def _class_weighted(reduction: jwxent.Reduction, **options: Any) -> Callable:
    """Cross-entropy weighted by fixed class weights from the training counts."""

    def build(counts: np.ndarray, steps: int) -> tuple[jax.Array, LossFn]:
        weights = jwxent.class_weights_from_counts(counts, **options)
        return weights, _class_weighted_loss(reduction)  # Same loss, same compiled step.

    return build


def _focal(gamma: float, **options: Any) -> Callable:
    """Focal loss; with `options`, weighted by class weights from the counts (Cui et al.)."""

    def build(counts: np.ndarray, steps: int) -> tuple[jax.Array | None, LossFn]:
        def loss(logits, labels, class_weights):
            value = jwxent.softmax_focal_loss_with_integer_labels(
                logits, labels, gamma=gamma, class_weights=class_weights, reduction="mean"
            )
            return value, class_weights

        weights = jwxent.class_weights_from_counts(counts, **options) if options else None
        return weights, loss

    return build


def _online(counts: np.ndarray, steps: int) -> tuple[jwxent.ClassBalanceState, LossFn]:
    """Class weights from a moving average of the batches' class frequencies."""

    def loss(logits, labels, state):
        state = jwxent.class_balance_update(state, labels, decay=0.99)
        class_weights = jwxent.class_balance_weights(state)  # 1/(C·f̂), mean one.
        value = jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, class_weights=class_weights, reduction="mean"
        )
        return value, state

    return jwxent.class_balance_init(len(counts)), loss  # Needs no counts up front.


def _logit_adjusted(counts: np.ndarray, steps: int) -> tuple[jax.Array, LossFn]:
    """Menon et al.'s logit-adjusted loss, τ = 1 (the balanced softmax)."""

    def loss(logits, labels, offsets):
        value = jwxent.softmax_cross_entropy_with_integer_labels(
            logits, labels, logit_adjustment=offsets, reduction="mean"
        )
        return value, offsets

    return jwxent.logit_adjustment_from_counts(counts, tau=1.0), loss


def _post_hoc(logits: jax.Array, counts: np.ndarray) -> jax.Array:
    return jwxent.post_hoc_logit_adjustment(logits, counts, tau=1.0)


DRW_START = 2 / 3  # LDAM-DRW switches the class weights on after this fraction of the steps.


def _ldam_drw(counts: np.ndarray, steps: int) -> tuple[tuple, LossFn]:
    """LDAM margins (max 0.5) on the plain logits, then effective-number weights (β = 0.9999)."""
    schedule = jwxent.deferred_reweighting(
        jwxent.class_weights_from_counts(
            counts, method="effective_number", beta=0.9999, normalize="sum_to_num_classes"
        ),
        start_step=round(DRW_START * steps),
    )

    def loss(logits, labels, state):
        step, margins = state
        value = jwxent.softmax_cross_entropy_with_integer_labels(
            logits,
            labels,
            label_margins=margins,
            class_weights=schedule(step),
            reduction="weighted_mean",
        )
        return value, (step + 1, margins)

    return (jnp.zeros((), jnp.int32), jwxent.ldam_margins(counts, max_margin=0.5)), loss


SCHEMES: tuple[Scheme, ...] = (
    Scheme("unweighted", '`reduction="mean"`', _unweighted),
    Scheme(
        "inverse frequency",
        '`class_weights_from_counts(method="inverse")`, `reduction="weighted_mean"`',
        _class_weighted("weighted_mean", method="inverse"),
    ),
    Scheme(
        "balanced",
        '`class_weights_from_counts(method="balanced")`, `reduction="mean"`',
        _class_weighted("mean", method="balanced"),
    ),
    Scheme(
        "effective number",
        '`class_weights_from_counts(method="effective_number", beta=0.99, '
        'normalize="sum_to_num_classes")`, `reduction="mean"`',
        _class_weighted(
            "mean", method="effective_number", beta=0.99, normalize="sum_to_num_classes"
        ),
    ),
    Scheme(
        "focal loss",
        '`softmax_focal_loss_with_integer_labels(gamma=2.0)`, `reduction="mean"`',
        _focal(2.0),
    ),
    Scheme(
        "class-balanced focal",
        "`softmax_focal_loss_with_integer_labels(gamma=2.0)` with the effective number row's "
        '`class_weights`, `reduction="mean"`',
        _focal(2.0, method="effective_number", beta=0.99, normalize="sum_to_num_classes"),
    ),
    Scheme(
        "online estimate",
        '`class_balance_update(decay=0.99)`, `class_balance_weights()`, `reduction="mean"`',
        _online,
    ),
    Scheme(
        "logit adjustment",
        "`logit_adjustment=logit_adjustment_from_counts(counts)` (τ = 1)",
        _logit_adjusted,
    ),
    Scheme(
        "post-hoc adjustment",
        "the unweighted model, predicting with `post_hoc_logit_adjustment(logits, counts)`",
        _unweighted,
        adjust=_post_hoc,
    ),
    Scheme(
        "LDAM-DRW",
        "`label_margins=ldam_margins(counts)`, `class_weights=deferred_reweighting(...)(step)` "
        '(effective number, β = 0.9999, from 2/3 of the steps), `reduction="weighted_mean"`',
        _ldam_drw,
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


@jax.jit
def mlp(params: Params, x: jax.Array) -> jax.Array:
    """Logits of an MLP with ReLU hidden layers."""
    num_layers = len(params) // 2
    for i in range(num_layers):
        x = x @ params[f"w{i}"] + params[f"b{i}"][None, :]  # Explicit batch axis.
        if i < num_layers - 1:
            x = jax.nn.relu(x)
    return x


def make_optimizer(args: argparse.Namespace) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(args.learning_rate, weight_decay=args.weight_decay),
    )


@functools.cache
def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation) -> Callable:
    """One jitted step: the scheme's loss, its gradient, the optax update.

    Cached: schemes with the same loss function (differing in their state
    only) share one compiled step.
    """

    def objective(params, state, x, y):
        return loss_fn(mlp(params, x), y, state)

    @jax.jit
    def train_step(params, opt_state, state, x, y):
        (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(params, state, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, state, loss

    return train_step


def predict(scheme: Scheme, params: Params, data: Data) -> np.ndarray:
    """Test-set predictions, through the scheme's prediction-time adjustment if it has one."""
    logits = mlp(params, jnp.asarray(data.x_test))
    if scheme.adjust is not None:
        logits = scheme.adjust(logits, data.train_counts)
    return np.asarray(jnp.argmax(logits, axis=-1))


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
    rare_accuracy: np.ndarray  # [repeats], mean recall of the rarest classes


def batch_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """`[steps, batch_size]` example indices: reshuffled epochs, the same for every scheme."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def per_class_recall(predicted: np.ndarray, data: Data) -> np.ndarray:
    """Recall of each class on the balanced test split (its mean is balanced accuracy)."""
    return metrics.recall_score(
        data.y_test, predicted, labels=range(data.num_classes), average=None, zero_division=0
    )


def macro_f1(predicted: np.ndarray, data: Data) -> float:
    return float(metrics.f1_score(data.y_test, predicted, average="macro", zero_division=0))


def train(
    schemes: Sequence[Scheme],
    data: Data,
    tx: optax.GradientTransformation,
    args: argparse.Namespace,
) -> list[Run]:
    """Trains the MLP once per seed with the schemes' shared `build`; evaluates each scheme.

    Seed `r` fixes the initialisation and the batch order of repeat `r`, the
    same for every scheme, so schemes differ only in their loss (and their
    prediction-time adjustment).
    """
    counts = np.asarray(jwxent.class_counts(jnp.asarray(data.y_train), data.num_classes))
    initial_state, loss_fn = schemes[0].build(counts, args.steps)
    train_step = make_train_step(loss_fn, tx)  # Compiled once, reused by every seed.
    eval_steps = np.arange(args.eval_every, args.steps + 1, args.eval_every)
    name = " / ".join(scheme.name for scheme in schemes)
    bar = tqdm(total=args.repeats * args.steps, desc=f"{name:>20}", disable=args.no_progress)
    sizes = (data.x_train.shape[1], args.hidden, data.num_classes)
    losses, curves, predictions = [], [], []
    for repeat in range(args.repeats):
        seed = args.seed + repeat
        params = init_mlp(jax.random.key(seed), sizes)
        opt_state, state = tx.init(params), initial_state
        step_losses, curve = [], []
        order = batch_order(len(data.y_train), args.steps, args.batch_size, seed)
        for step, batch in enumerate(order, start=1):
            # NumPy batches: one transfer per step, no eager gathers to dispatch.
            params, opt_state, state, loss = train_step(
                params, opt_state, state, data.x_train[batch], data.y_train[batch]
            )
            step_losses.append(loss)  # Kept on device; no sync per step.
            if step % args.eval_every == 0:
                curve.append(
                    [per_class_recall(predict(s, params, data), data).mean() for s in schemes]
                )
                bar.set_postfix(seed=seed, loss=f"{float(loss):.3f}", bal_acc=f"{curve[-1][0]:.3f}")
            bar.update()
        losses.append(np.asarray(jax.device_get(step_losses)))
        curves.append(curve)  # [evals, schemes]
        predictions.append([predict(scheme, params, data) for scheme in schemes])
    bar.close()
    return [
        evaluate(
            scheme,
            data,
            np.stack(losses),
            eval_steps,
            np.asarray(curves)[:, :, i],
            [p[i] for p in predictions],
        )
        for i, scheme in enumerate(schemes)
    ]


def evaluate(
    scheme: Scheme,
    data: Data,
    losses: np.ndarray,
    eval_steps: np.ndarray,
    curves: np.ndarray,
    predictions: Sequence[np.ndarray],
) -> Run:
    """A scheme's `Run` from its training losses, curves and final test predictions per seed."""
    recall = np.stack([per_class_recall(p, data) for p in predictions])
    return Run(
        scheme=scheme,
        losses=losses,
        eval_steps=eval_steps,
        eval_balanced_accuracy=curves,
        recall=recall,
        balanced_accuracy=recall.mean(axis=1),
        macro_f1=np.asarray([macro_f1(p, data) for p in predictions]),
        rare_accuracy=recall[:, data.rarest].mean(axis=1),
    )


def train_all(schemes: Sequence[Scheme], data: Data, args: argparse.Namespace) -> list[Run]:
    """Every scheme's `Run`, in the order of `schemes`; schemes sharing `build` train once."""
    groups: dict[Callable, list[Scheme]] = {}
    for scheme in schemes:
        groups.setdefault(scheme.build, []).append(scheme)
    tx = make_optimizer(args)  # One optimiser object: train steps are cached by (loss, tx).
    runs = [run for group in groups.values() for run in train(group, data, tx, args)]
    by_name = {run.scheme.name: run for run in runs}
    return [by_name[scheme.name] for scheme in schemes]


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def _mean_std(values: np.ndarray) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown_table(runs: Sequence[Run], data: Data) -> str:
    """The results as a Markdown table, one row per scheme, mean ± std over seeds."""
    lines = [
        f"| scheme | balanced accuracy | macro-F1 | rarest {len(data.rarest)} classes "
        "| jwxent call |",
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
    fig, (ax_recall, ax_loss, ax_bacc) = plt.subplots(1, 3, figsize=(18, 5))
    by_frequency = np.argsort(-data.train_counts, kind="stable")
    ranks = np.arange(data.num_classes)
    for run in runs:
        recall = run.recall.mean(axis=0)[by_frequency]
        ax_recall.plot(ranks, recall, marker=".", linewidth=1, label=run.scheme.name)
        losses = run.losses.mean(axis=0)
        ax_loss.plot(np.arange(1, len(losses) + 1), smooth(losses, 25), label=run.scheme.name)
        curve = run.eval_balanced_accuracy.mean(axis=0)
        ax_bacc.plot(run.eval_steps, curve, marker=".", label=run.scheme.name)
    ticks = ranks[:: max(1, data.num_classes // 10)]
    labels = [f"{by_frequency[r]}\n(n={data.train_counts[by_frequency[r]]})" for r in ticks]
    ax_recall.set_xticks(ticks, labels, fontsize=8)
    ax_recall.set(title="Test recall per class", xlabel="class (training count)", ylim=(0, 1.05))
    ax_loss.set(title="Training loss (each scheme's own objective)", xlabel="step", yscale="log")
    ax_bacc.set(title="Test balanced accuracy", xlabel="step")
    ax_bacc.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Mean over {len(runs[0].balanced_accuracy)} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
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
    data = DATASETS[args.dataset](args.imbalance, args.seed)
    print(f"{args.dataset}: training counts per class {data.train_counts.tolist()}")
    print(f"test: {len(data.y_test)} examples, {len(data.y_test) // data.num_classes} per class")
    start = time.perf_counter()
    runs = train_all(SCHEMES, data, args)
    seconds = time.perf_counter() - start
    table = markdown_table(runs, data)
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
