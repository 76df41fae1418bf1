"""The public surface: exports, optax-compatible signatures, documented functions."""

import inspect

import optax.losses
import pytest

import jwxent

PUBLIC_FUNCTIONS = [name for name in jwxent.__all__ if inspect.isfunction(getattr(jwxent, name))]
OPTAX_NAMED = [name for name in PUBLIC_FUNCTIONS if hasattr(optax.losses, name)]


def test_all_names_exist_and_are_unique():
    assert len(set(jwxent.__all__)) == len(jwxent.__all__)
    for name in jwxent.__all__:
        assert hasattr(jwxent, name), name
    assert isinstance(jwxent.__version__, str) and jwxent.__version__


def test_optax_named_functions_cover_the_softmax_family():
    for name in (
        "softmax_cross_entropy",
        "softmax_cross_entropy_with_integer_labels",
        "safe_softmax_cross_entropy",
        "poly_loss_cross_entropy",
    ):
        assert name in OPTAX_NAMED


@pytest.mark.parametrize("name", OPTAX_NAMED)
def test_optax_parameters_keep_their_names_and_order(name):
    """Every optax parameter exists in jwxent under the same name, in the same order."""
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    ours = inspect.signature(getattr(jwxent, name)).parameters
    our_names = list(ours)
    assert our_names[: len(theirs)] == list(theirs)
    for parameter_name, parameter in theirs.items():
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            assert ours[parameter_name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


@pytest.mark.parametrize("name", OPTAX_NAMED)
def test_jwxent_extras_are_keyword_only(name):
    theirs = inspect.signature(getattr(optax.losses, name)).parameters
    ours = inspect.signature(getattr(jwxent, name)).parameters
    for parameter_name, parameter in ours.items():
        if parameter_name not in theirs:
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter_name


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_public_functions_are_documented_with_examples(name):
    doc = inspect.getdoc(getattr(jwxent, name)) or ""
    assert "Examples:" in doc, name
    assert "Args:" in doc or "keywords" in doc, name
