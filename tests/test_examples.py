"""The long-tail example runs end to end (in its `--quick` form) and reports sane numbers."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "long_tail.py"


@pytest.fixture(scope="module")
def long_tail():
    spec = importlib.util.spec_from_file_location("long_tail", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_split_is_long_tailed_and_test_split_balanced(long_tail):
    data = long_tail.load_data(imbalance=50.0, seed=0)
    counts = np.bincount(data.y_train, minlength=long_tail.NUM_CLASSES)
    assert counts.max() / counts.min() == 50
    assert len(set(counts.tolist())) == long_tail.NUM_CLASSES  # A strict tail, no ties.
    test_counts = np.bincount(data.y_test, minlength=long_tail.NUM_CLASSES)
    np.testing.assert_array_equal(test_counts, long_tail.TEST_PER_CLASS)


def test_the_example_compares_the_six_schemes(long_tail):
    assert [scheme.name for scheme in long_tail.SCHEMES] == [
        "unweighted",
        "inverse frequency",
        "balanced",
        "effective number",
        "focal loss",
        "online estimate",
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

    assert (tmp_path / "long_tail.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| scheme | balanced accuracy | macro-F1 |")
    assert len(table) == 2 + len(runs)
    for row, run in zip(table[2:], runs, strict=True):
        assert row.startswith(f"| {run.scheme.name} | {np.mean(run.balanced_accuracy):.3f} ± ")


def test_the_schemes_weight_rare_classes_up(long_tail):
    """The fixed class weights rank the classes inversely to their counts."""
    data = long_tail.load_data(imbalance=50.0, seed=0)
    counts = np.bincount(data.y_train, minlength=long_tail.NUM_CLASSES)
    for scheme in long_tail.SCHEMES:
        weights = scheme.init(data.y_train)
        if not hasattr(weights, "shape"):
            continue  # Unweighted, or a stateful estimator.
        weights = np.asarray(weights)
        np.testing.assert_array_equal(np.argsort(weights), np.argsort(-counts))
