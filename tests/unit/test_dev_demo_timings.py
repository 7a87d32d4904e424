"""The demo reads kubelet's image-pull times from its ``Pulled`` events (Go durations)."""

from __future__ import annotations

import pytest

from kaito_dev.demo import PULLED, go_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m1.993832453s", 61.993832453), ("1.91241034s", 1.91241034), ("912.5ms", 0.9125),
     ("1h2m3s", 3723.0), ("5µs", 5e-6)],
)  # fmt: skip
def test_go_durations_are_read_as_seconds(text: str, seconds: float) -> None:
    assert go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1.5", "3 s", "1m-2s"])
def test_what_is_not_a_go_duration_gives_none(text: str) -> None:
    assert go_duration(text) is None


def test_kubelet_120s_pulled_message_names_the_image_and_the_time() -> None:
    m = PULLED.search(
        'Successfully pulled image "127.0.0.1:5000/kaito-python/inference:0.1.0" in 1m1.99s'
    )
    assert m is not None
    assert m[1] == "127.0.0.1:5000/kaito-python/inference:0.1.0"
    assert go_duration(m[2]) == pytest.approx(61.99)
