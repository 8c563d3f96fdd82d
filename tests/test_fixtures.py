"""The shared fixtures' own guarantee: a model with a known behaviour has it, or the fixture fails."""

import pytest
from conftest import build_tiny, train_constant


@pytest.mark.slow
def test_train_constant_fails_naming_what_the_model_said(tmp_path):
    # One step cannot teach a fresh model anything: the fixture must refuse to hand it out.
    base = build_tiny(tmp_path / "base", template="chatml", arch="qwen2")
    with pytest.raises(AssertionError, match=r"after 1 rounds of 1 steps: prompt .*: greedy output .* \(wanted"):
        train_constant(base, tmp_path / "m", "So $\\boxed{7}$.<|im_end|>", rounds=1, steps=1)
    assert not (tmp_path / "m").exists()
