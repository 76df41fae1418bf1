"""The examples run end to end (in quick forms) and report sane numbers."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "long_tail.py"
MULTIPROCESS = EXAMPLE.parent / "multiprocess.py"


@pytest.fixture(scope="module")
def long_tail():
    spec = importlib.util.spec_from_file_location("long_tail", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_digits_training_split_is_long_tailed_and_test_split_balanced(long_tail):
    data = long_tail.load_digits(imbalance=50.0, seed=0)
    counts = data.train_counts
    assert data.num_classes == 10 and counts.max() == 100
    assert counts.max() / counts.min() == 50
    assert len(set(counts.tolist())) == data.num_classes  # A strict tail, no ties.
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), 74)


def test_gaussian_data_set_is_long_tailed_and_reproducible(long_tail):
    data = long_tail.load_gaussian(imbalance=100.0, seed=0)
    counts = data.train_counts
    assert data.num_classes == 50 and data.x_train.shape == (counts.sum(), 32)
    assert counts.max() == 400 and counts.min() == 4
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=50), 40)
    assert len(data.rarest) == 15 and set(counts[data.rarest]) <= set(np.sort(counts)[:15])
    again = long_tail.load_gaussian(imbalance=100.0, seed=0)
    np.testing.assert_array_equal(again.x_train, data.x_train)


def test_the_example_compares_ten_schemes(long_tail):
    assert [scheme.name for scheme in long_tail.SCHEMES] == [
        "unweighted",
        "inverse frequency",
        "balanced",
        "effective number",
        "focal loss",
        "class-balanced focal",
        "online estimate",
        "logit adjustment",
        "post-hoc adjustment",
        "LDAM-DRW",
    ]


def test_quick_run_end_to_end(long_tail, tmp_path):
    """`main(["--quick", ...])`: metrics in [0, 1], falling losses, the PNG and the table.

    One test for the whole run, so that parallel test workers run it once.
    """
    # The example runs under JAX's default promotion, as a user's script does:
    # optax's Adam raises its decay to the integer step count, which strict
    # promotion (on for the library's own tests) rejects.
    with jax.numpy_dtype_promotion("standard"):
        runs = long_tail.main(["--quick", "--out", tmp_path])

    assert [run.scheme.name for run in runs] == [scheme.name for scheme in long_tail.SCHEMES]
    for run in runs:
        for metric in (run.balanced_accuracy, run.macro_f1, run.rare_accuracy, run.recall):
            assert np.all(np.isfinite(metric)), run.scheme.name
            assert np.all((metric >= 0.0) & (metric <= 1.0)), run.scheme.name
        first, last = run.losses[:, :10].mean(), run.losses[:, -10:].mean()
        assert np.isfinite(run.losses).all(), run.scheme.name
        assert last < 0.7 * first, (run.scheme.name, first, last)

    by_name = {run.scheme.name: run for run in runs}
    # Post-hoc adjustment re-reads the unweighted model: same training, other predictions.
    np.testing.assert_array_equal(
        by_name["post-hoc adjustment"].losses, by_name["unweighted"].losses
    )
    assert not np.array_equal(by_name["post-hoc adjustment"].recall, by_name["unweighted"].recall)

    assert (tmp_path / "long_tail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| scheme | balanced accuracy | macro-F1 | rarest 3 classes |")
    assert len(table) == 2 + len(runs)
    for row, run in zip(table[2:], runs, strict=True):
        assert row.startswith(f"| {run.scheme.name} | {np.mean(run.balanced_accuracy):.3f} ± ")


def _build(long_tail, name, counts, steps=300):
    (scheme,) = [s for s in long_tail.SCHEMES if s.name == name]
    return scheme.build(counts, steps)


def test_the_schemes_favour_rare_classes(long_tail):
    """Weights fall, offsets rise and margins fall with the class count."""
    counts = long_tail.load_digits(imbalance=50.0, seed=0).train_counts
    for name in ("inverse frequency", "balanced", "effective number", "class-balanced focal"):
        weights, _ = _build(long_tail, name, counts)
        np.testing.assert_array_equal(np.argsort(weights), np.argsort(-counts), err_msg=name)
    offsets, _ = _build(long_tail, "logit adjustment", counts)
    np.testing.assert_array_equal(np.argsort(offsets), np.argsort(counts))
    (step, margins), _ = _build(long_tail, "LDAM-DRW", counts)
    assert int(step) == 0 and float(np.max(margins)) == pytest.approx(0.5)
    np.testing.assert_array_equal(np.argsort(margins), np.argsort(-counts))


def test_ldam_drw_switches_the_class_weights_on_at_two_thirds_of_the_steps(long_tail):
    counts = long_tail.load_digits(imbalance=50.0, seed=0).train_counts
    (_, margins), loss = _build(long_tail, "LDAM-DRW", counts, steps=300)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((16, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    cw = jwxent.class_weights_from_counts(
        counts, method="effective_number", beta=0.9999, normalize="sum_to_num_classes"
    )
    for step, class_weights in ((199, None), (200, cw)):
        value, (next_step, _) = loss(logits, labels, (jnp.int32(step), margins))
        expected = jwxent.softmax_cross_entropy_with_integer_labels(
            logits,
            labels,
            label_margins=margins,
            class_weights=class_weights,
            reduction="weighted_mean",
        )
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        assert int(next_step) == step + 1


def test_post_hoc_adjustment_favours_rare_classes(long_tail):
    data = long_tail.load_digits(imbalance=50.0, seed=0)
    (scheme,) = [s for s in long_tail.SCHEMES if s.name == "post-hoc adjustment"]
    flat = jnp.zeros((1, data.num_classes), jnp.float32)
    adjusted = scheme.adjust(flat, data.train_counts)
    assert int(jnp.argmax(adjusted)) == int(np.argmin(data.train_counts))


def test_multiprocess_example_trains_in_two_processes_that_agree():
    """`python examples/multiprocess.py --num-processes 2`, 3 small steps."""
    command = [sys.executable, str(MULTIPROCESS), "--num-processes", "2", "--steps", "3"]
    command += ["--batch-per-process", "16", "--timeout", "120"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    for process in range(2):
        assert f"process {process}: all 2 processes agree" in done.stdout, done.stdout
