"""The live view's arithmetic: the burn rate over a sliding window and the usage line."""

from __future__ import annotations

from fanflow.result import Usage
from fanflow.watching import BurnRate, usage_line


def test_the_burn_rate_is_measured_over_the_last_window() -> None:
    burn = BurnRate(window_s=10.0)
    assert burn.rate() == (0.0, 0.0)
    for second in range(31):  # 100 tokens/s for 20 s, then 400 tokens/s (four branches at once)
        tokens = 100 * min(second, 20) + 400 * max(0, second - 20)
        burn.add(float(second), tokens, tokens / 1e6)
    tokens_per_s, dollars_per_s = burn.rate()
    assert 390 <= tokens_per_s <= 400  # the old, slower seconds have left the window
    assert abs(dollars_per_s - tokens_per_s / 1e6) < 1e-12


def test_the_usage_line_counts_cached_tokens_inside_the_input() -> None:
    usage = Usage(input_tokens=10_000, cached_tokens=2_000, output_tokens=2_345, cost_usd=0.0123, calls=5)
    line = usage_line(usage, (2469.0, 0.0001))
    assert line.startswith("tokens 12,345 (in 10,000 incl. 2,000 cached / out 2,345) · $0.0123 · 5 calls")
    assert "burn 2,469 tok/s ($0.0060/min)" in line
    assert "cached" not in usage_line(Usage(input_tokens=5, output_tokens=1))
