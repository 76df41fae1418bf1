"""The documentation is complete, its code runs, and its claims hold.

* every public name has an entry in the API reference;
* the README keeps its two set-up commands;
* the `>>>` examples of the guide pages run and print what the pages say;
* every jwxent snippet of the migration page returns the number of the
  framework recipe next to it, transcribed from that framework's documented
  formula in float64 NumPy;
* the derivation of "why class weights must not multiply the logits" holds.
"""

import doctest
import pathlib
import re
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jwxent
from tests._tolerance import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

README_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[examples]' "
    "&& .venv/bin/python examples/long_tail.py",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest",
)


def user_defaults():
    """JAX's default promotion rules, under which the pages' user code runs.

    The test suite turns strict promotion on for the library; the pages show
    code as users write it (`x @ w + b`), and optax's Adam needs the default
    dtype promotion.
    """
    return _Both(jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"))


class _Both:
    def __init__(self, first, second):
        self._contexts = (first, second)

    def __enter__(self):
        for context in self._contexts:
            context.__enter__()

    def __exit__(self, *exc_info):
        for context in reversed(self._contexts):
            context.__exit__(*exc_info)


# ---------------------------------------------------------------------------
# Completeness.
# ---------------------------------------------------------------------------


def test_every_public_name_is_in_the_api_reference():
    documented = re.findall(r"^::: jwxent\.(\w+)$", (DOCS / "api.md").read_text(), re.MULTILINE)
    assert len(documented) == len(set(documented)), "a name is documented twice"
    undocumented = sorted(set(jwxent.__all__) - set(documented))
    assert not undocumented, f"exported but not in docs/api.md: {undocumented}"
    unexported = sorted(set(documented) - set(jwxent.__all__))
    assert not unexported, f"in docs/api.md but not in jwxent.__all__: {unexported}"


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_keeps_its_set_up_commands_verbatim(command):
    assert command in (ROOT / "README.md").read_text()


def _results_table(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and " ± " in line]


def test_home_page_quotes_the_same_long_tail_results_as_the_readme():
    readme = _results_table((ROOT / "README.md").read_text())
    assert len(readme) == 10
    assert _results_table((DOCS / "index.md").read_text()) == readme


def test_guide_pages_exist_and_are_in_the_nav():
    """The pages written with this suite are in the site's navigation."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in ("index", "getting_started", "semantics", "migration", "gradients", "api"):
        assert (DOCS / f"{page}.md").is_file()
        assert f" {page}.md" in nav, page
    assert " class_weights_vs_logits.md" in nav


# ---------------------------------------------------------------------------
# The pages' examples run.
# ---------------------------------------------------------------------------

DOCTEST_PAGES = ("getting_started", "gradients", "class_weights_vs_logits")


def _fenced_python(text: str) -> list[str]:
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("page", DOCTEST_PAGES)
def test_page_examples_run_and_print_what_the_page_says(page):
    blocks = [b for b in _fenced_python((DOCS / f"{page}.md").read_text()) if ">>>" in b]
    assert blocks, f"docs/{page}.md has no runnable example"
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, page, f"{page}.md", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    with user_defaults():
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0, result


# ---------------------------------------------------------------------------
# Migration: each jwxent snippet against its framework's formula.
# ---------------------------------------------------------------------------

RNG = np.random.default_rng(7)
N, C, L = 24, 5, 3


def _f32(x):
    return np.asarray(x, np.float32)


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


LOGITS = _f32(2.0 * RNG.standard_normal((N, C)))
LABELS = RNG.integers(0, C, N).astype(np.int32)
CLASS_WEIGHTS = _f32([1.0, 0.0, 2.5, 4.0, 0.5])  # A zero weight: TF 1's count changes.
SAMPLE_WEIGHT = _f32(RNG.uniform(0.0, 2.0, N))
PROBS = _f32(np.exp(_log_softmax(RNG.standard_normal((N, C)))))
ONEHOT = _f32(np.eye(C)[LABELS])
BINARY_LOGITS = _f32(3.0 * RNG.standard_normal((N, L)))
BINARY_LABELS = _f32(RNG.integers(0, 2, (N, L)))
BINARY_PROBS = _f32(RNG.uniform(0.0, 1.0, (N, L)))
POS_WEIGHT = _f32([3.0, 0.5, 1.0])


def _nll(logits, labels):
    return -np.take_along_axis(_log_softmax(logits), labels[:, None], -1)[:, 0]


def tf1_sparse_softmax_with_gathered_weights():
    w = CLASS_WEIGHTS[LABELS].astype(np.float64)
    expected = np.sum(w * _nll(LOGITS, LABELS)) / np.count_nonzero(w)  # SUM_BY_NONZERO_WEIGHTS
    return dict(logits=LOGITS, labels=LABELS, class_weights=CLASS_WEIGHTS), expected


def tf2_one_hot_weights_reduce_mean():
    onehot = np.eye(C)[LABELS]
    example_weights = np.sum(CLASS_WEIGHTS * onehot, axis=-1)
    per_example = -np.sum(onehot * _log_softmax(LOGITS), axis=-1)
    expected = np.mean(example_weights * per_example)
    return dict(logits=LOGITS, labels=LABELS, class_weights=CLASS_WEIGHTS), expected


def tf_weighted_cross_entropy_with_logits():
    # TF's documented formula: labels·-log(σ(x))·pos_weight + (1-labels)·-log(1-σ(x)).
    x, z, q = BINARY_LOGITS, BINARY_LABELS, POS_WEIGHT.astype(np.float64)
    per_element = -(z * _log_sigmoid(x) * q + (1 - z) * _log_sigmoid(-x))
    inputs = dict(logits=BINARY_LOGITS, labels=BINARY_LABELS, pos_weight=POS_WEIGHT)
    return inputs, np.mean(per_element)


def keras_categorical_crossentropy_on_probabilities():
    # Keras 3: renormalise, clip to [eps, 1 - eps], -sum(target·log), then
    # "sum_over_batch_size": sum(loss·sample_weight) / batch size.
    eps = 1e-7
    p = PROBS.astype(np.float64) / PROBS.astype(np.float64).sum(-1, keepdims=True)
    per_example = -np.sum(ONEHOT * np.log(np.clip(p, eps, 1 - eps)), axis=-1)
    expected = np.sum(per_example * SAMPLE_WEIGHT) / N
    return dict(probs=PROBS, onehot=ONEHOT, sample_weight=SAMPLE_WEIGHT), expected


def keras_binary_crossentropy_on_probabilities():
    # Keras 3: clip, elementwise BCE, mean over the last axis, then
    # "sum_over_batch_size" with per-example sample weights.
    eps = 1e-7
    p = np.clip(BINARY_PROBS.astype(np.float64), eps, 1 - eps)
    y = BINARY_LABELS
    per_example = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=-1)
    expected = np.sum(per_example * SAMPLE_WEIGHT) / N
    inputs = dict(probs=BINARY_PROBS, y_true=BINARY_LABELS, sample_weight=SAMPLE_WEIGHT)
    return inputs, expected


def pytorch_cross_entropy_weight_ignore_index_label_smoothing():
    # PyTorch's documented formula with weight w and smoothing ε, mean over the
    # examples not ignored, divided by the sum of their w[y].
    labels = np.where(RNG.random(N) < 0.25, -100, LABELS).astype(np.int32)
    kept = labels != -100
    log_p = _log_softmax(LOGITS[kept])
    y = labels[kept]
    w = CLASS_WEIGHTS.astype(np.float64)
    eps = 0.1
    per_example = (1 - eps) * w[y] * -log_p[np.arange(len(y)), y] + eps / C * np.sum(
        w * -log_p, axis=-1
    )
    expected = np.sum(per_example) / np.sum(w[y])
    return dict(logits=LOGITS, labels=labels, class_weights=CLASS_WEIGHTS), expected


def pytorch_bce_with_logits_pos_weight():
    # PyTorch: ℓ = -weight·[pos_weight·y·log σ(x) + (1-y)·log(1-σ(x))], mean over elements.
    weight = _f32(RNG.uniform(0.5, 1.5, L))
    x, y = BINARY_LOGITS, BINARY_LABELS
    per_element = -weight * (POS_WEIGHT * y * _log_sigmoid(x) + (1 - y) * _log_sigmoid(-x))
    inputs = dict(logits=x, labels=y, weight=weight, pos_weight=POS_WEIGHT)
    return inputs, np.mean(per_element)


def optax_masked_mean():
    mask = RNG.random(N) < 0.7
    expected = np.sum(np.where(mask, _nll(LOGITS, LABELS), 0.0)) / mask.sum()
    return dict(logits=LOGITS, labels=LABELS, mask=mask), expected


MIGRATION_RECIPES = {
    "TensorFlow 1: `tf.losses.sparse_softmax_cross_entropy`": (
        tf1_sparse_softmax_with_gathered_weights
    ),
    "TensorFlow 2: weights from a one-hot": tf2_one_hot_weights_reduce_mean,
    "TensorFlow: `tf.nn.weighted_cross_entropy_with_logits": tf_weighted_cross_entropy_with_logits,
    "Keras: `CategoricalCrossentropy`": keras_categorical_crossentropy_on_probabilities,
    "Keras: `BinaryCrossentropy`": keras_binary_crossentropy_on_probabilities,
    "PyTorch: `F.cross_entropy": pytorch_cross_entropy_weight_ignore_index_label_smoothing,
    "PyTorch: `BCEWithLogitsLoss": pytorch_bce_with_logits_pos_weight,
    "optax": optax_masked_mean,
}


def _migration_snippets() -> dict[str, str]:
    """Section heading -> the code of its `=== "jwxent"` tab."""
    text = (DOCS / "migration.md").read_text()
    snippets = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading = section.splitlines()[0]
        match = re.search(r'^=== "jwxent"\n\n((?:    .*\n|\n)+)', section, re.M)
        if match:
            (code,) = _fenced_python(textwrap.dedent(match.group(1)))
            snippets[heading] = code
    return snippets


def _recipe_for(heading: str):
    matches = [recipe for key, recipe in MIGRATION_RECIPES.items() if heading.startswith(key)]
    assert len(matches) == 1, f"no reference for the migration recipe {heading!r}"
    return matches[0]


def test_every_migration_recipe_has_a_reference():
    headings = list(_migration_snippets())
    assert len(headings) == len(MIGRATION_RECIPES)
    for heading in headings:
        _recipe_for(heading)


@pytest.mark.parametrize("heading", list(_migration_snippets()))
def test_migration_snippet_reproduces_the_framework_number(heading):
    inputs, expected = _recipe_for(heading)()
    namespace = {"jnp": jnp, "jwxent": jwxent, **inputs}
    exec(_migration_snippets()[heading], namespace)
    loss = namespace["loss"]
    assert loss.shape == ()
    assert_close(loss, expected, jnp.float32, terms=N * L)


# ---------------------------------------------------------------------------
# Why class weights must not multiply the logits.
# ---------------------------------------------------------------------------

LOGIT_WEIGHTS = _f32([1.0, 3.0, 0.5, 2.0, 10.0])


def _weighted_nll(logits, labels, class_weights):
    return np.asarray(class_weights, np.float64)[labels] * _nll(logits, labels)


def test_multiplying_logits_is_a_different_loss_than_class_weights():
    weighted = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, class_weights=LOGIT_WEIGHTS
    )
    assert_close(weighted, _weighted_nll(LOGITS, LABELS, LOGIT_WEIGHTS), jnp.float32, terms=C)
    scaled = jwxent.softmax_cross_entropy_with_integer_labels(LOGITS * LOGIT_WEIGHTS, LABELS)
    assert_close(scaled, _nll(LOGITS * LOGIT_WEIGHTS, LABELS), jnp.float32, terms=C)
    assert np.min(np.abs(np.asarray(weighted) - np.asarray(scaled))) > 1e-3


def test_class_weights_scale_the_whole_gradient_scaled_logits_do_not():
    """`∂(c_y ℓ)/∂z = c_y (p − e_y)`, but `∂ℓ(c⊙z)/∂z = c ⊙ (p' − e_y)`."""
    weighted_grad = jax.grad(
        lambda z: jwxent.softmax_cross_entropy_with_integer_labels(
            z, LABELS, class_weights=LOGIT_WEIGHTS, reduction="sum"
        )
    )(LOGITS)
    p = np.exp(_log_softmax(LOGITS))
    onehot = np.eye(C)[LABELS]
    expected = LOGIT_WEIGHTS[LABELS][:, None] * (p - onehot)
    assert_close(weighted_grad, expected, jnp.float32, terms=C)
    scaled_grad = jax.grad(
        lambda z: jwxent.softmax_cross_entropy_with_integer_labels(
            z * LOGIT_WEIGHTS[None, :], LABELS, reduction="sum"
        )
    )(LOGITS)
    p_scaled = np.exp(_log_softmax(LOGITS * LOGIT_WEIGHTS))
    assert_close(scaled_grad, LOGIT_WEIGHTS * (p_scaled - onehot), jnp.float32, terms=C)
    assert np.max(np.abs(np.asarray(weighted_grad) - np.asarray(scaled_grad))) > 0.1


def test_at_zero_logits_scaling_ignores_the_weights():
    zeros = jnp.zeros((C, C), jnp.float32)
    labels = jnp.arange(C, dtype=jnp.int32)
    scaled = jwxent.softmax_cross_entropy_with_integer_labels(
        zeros * LOGIT_WEIGHTS[None, :], labels
    )
    weighted = jwxent.softmax_cross_entropy_with_integer_labels(
        zeros, labels, class_weights=LOGIT_WEIGHTS
    )
    assert_close(scaled, np.full(C, np.log(C)), jnp.float32)
    assert_close(weighted, LOGIT_WEIGHTS * np.log(C), jnp.float32)


def _expected_loss_gradient(z, label_probs, loss):
    """Gradient at `z` of `Σ_k π_k · loss(z, k)`: zero at the minimiser."""
    labels = jnp.arange(C, dtype=jnp.int32)

    def expected_loss(z):
        per_label = loss(jnp.broadcast_to(z, (C, C)), labels)
        return jnp.sum(jnp.asarray(label_probs, jnp.float32) * per_label)

    return np.asarray(jax.grad(expected_loss)(jnp.asarray(z, jnp.float32)))


def test_class_weighted_optimum_is_the_reweighted_posterior():
    """The expected weighted loss is minimal at `p ∝ c ⊙ π`, not at `p = π`."""
    label_probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])

    def weighted(z, labels):
        return jwxent.softmax_cross_entropy_with_integer_labels(
            z, labels, class_weights=LOGIT_WEIGHTS
        )

    at_reweighted = _expected_loss_gradient(
        np.log(LOGIT_WEIGHTS * label_probs), label_probs, weighted
    )
    np.testing.assert_allclose(at_reweighted, 0.0, atol=1e-5)
    at_prior = _expected_loss_gradient(np.log(label_probs), label_probs, weighted)
    assert np.max(np.abs(at_prior)) > 0.1


def test_scaled_logits_optimum_is_the_unweighted_posterior():
    """With scaled logits the minimiser predicts `softmax(c ⊙ z) = π`: no reweighting."""
    label_probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])

    def scaled(z, labels):
        return jwxent.softmax_cross_entropy_with_integer_labels(z * LOGIT_WEIGHTS[None, :], labels)

    z_star = np.log(label_probs) / LOGIT_WEIGHTS  # softmax(c ⊙ z*) = π
    np.testing.assert_allclose(_expected_loss_gradient(z_star, label_probs, scaled), 0.0, atol=1e-5)


# ---------------------------------------------------------------------------
# Decisions stated on the Semantics page.
# ---------------------------------------------------------------------------


def test_zero_weight_examples_count_in_mean_but_masked_ones_do_not():
    weights = np.where(np.arange(N) < 4, 0.0, 1.0).astype(np.float32)
    nll = _nll(LOGITS, LABELS)
    by_weight = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, weights=weights, reduction="mean"
    )
    assert_close(by_weight, np.sum(weights * nll) / N, jnp.float32, terms=N)
    by_mask = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, where=weights > 0, reduction="mean"
    )
    assert_close(by_mask, np.sum(weights * nll) / np.sum(weights), jnp.float32, terms=N)


@pytest.mark.parametrize("reduction", ["none", "mean", "weighted_mean", "sum_by_nonzero_weights"])
def test_one_hot_labels_agree_with_integer_labels_with_every_keyword(reduction):
    keywords = dict(
        weights=SAMPLE_WEIGHT,
        class_weights=CLASS_WEIGHTS,
        label_smoothing=0.2,
        z_loss=1e-2,
        reduction=reduction,
    )
    integer = jwxent.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS, **keywords)
    one_hot = jwxent.softmax_cross_entropy(LOGITS, ONEHOT, **keywords)
    assert_close(one_hot, integer, jnp.float32, terms=N * C)


def test_soft_label_weighted_mean_divides_by_weights_times_expected_class_weight():
    log_p = _log_softmax(LOGITS)
    cw = CLASS_WEIGHTS.astype(np.float64)
    losses = -np.sum(cw * PROBS * log_p, axis=-1) * SAMPLE_WEIGHT
    denominator = np.sum(SAMPLE_WEIGHT * np.sum(cw * PROBS, axis=-1))
    actual = jwxent.softmax_cross_entropy(
        LOGITS,
        PROBS,
        weights=SAMPLE_WEIGHT,
        class_weights=CLASS_WEIGHTS,
        reduction="weighted_mean",
    )
    assert_close(actual, np.sum(losses) / denominator, jnp.float32, terms=N * C)


def test_z_loss_is_weighted_like_the_example():
    lse = np.log(np.sum(np.exp(np.asarray(LOGITS, np.float64)), axis=-1))
    w = SAMPLE_WEIGHT * CLASS_WEIGHTS[LABELS].astype(np.float64)
    expected = w * (_nll(LOGITS, LABELS) + 0.1 * lse**2)
    actual = jwxent.softmax_cross_entropy_with_integer_labels(
        LOGITS, LABELS, weights=SAMPLE_WEIGHT, class_weights=CLASS_WEIGHTS, z_loss=0.1
    )
    assert_close(actual, expected, jnp.float32, terms=C)


def test_label_smoothing_with_a_class_mask_is_an_error_for_integer_labels_only():
    class_mask = np.ones((N, C), bool)
    class_mask[:, 1] = False
    with pytest.raises(ValueError, match="label_smoothing"):
        jwxent.softmax_cross_entropy_with_integer_labels(
            LOGITS, LABELS, where=class_mask, label_smoothing=0.1
        )
    smoothed = (0.9 * ONEHOT + 0.1 / C) * class_mask  # zeroed on the masked class
    log_p = np.where(class_mask, _log_softmax(np.where(class_mask, LOGITS, -np.inf)), 0.0)
    expected = -np.sum(smoothed * log_p, axis=-1)
    rows = ONEHOT[:, 1] == 0  # Rows whose label is a masked class are meaningless.
    actual = jwxent.softmax_cross_entropy(LOGITS, ONEHOT, where=class_mask, label_smoothing=0.1)
    assert_close(np.asarray(actual)[rows], expected[rows], jnp.float32, terms=C)


def test_everything_ignored_gives_zero_not_nan():
    labels = np.full(N, -100, np.int32)
    loss, grad = jax.value_and_grad(
        lambda z: jwxent.softmax_cross_entropy_with_integer_labels(
            z, labels, ignore_index=-100, reduction="weighted_mean"
        )
    )(LOGITS)
    assert float(loss) == 0.0
    assert not np.any(np.asarray(grad))


def test_no_control_characters_in_sources_and_docs():
    """A docstring edited through a non-raw string turns `\\tanh` into a TAB and
    `\\frac` into a form feed, which breaks the API page's maths silently."""
    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\t]")
    files = [*ROOT.glob("jwxent/**/*.py"), *DOCS.glob("*.md"), ROOT / "README.md"]
    bad = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in files
        for n, line in enumerate(p.read_text().split("\n"), 1)
        if control.search(line)
    ]
    assert not bad, bad
