"""Global rate limits for shared APIs, held in Redis, across every worker (DESIGN §4).

Celery's ``rate_limit`` is per worker; these limits hold across every process. A limit key (any
string: ``openai:gpt-4o-mini``, ``anthropic:key-2``, ``github``) may limit requests per window,
tokens per window (in total, or input and output apart) and calls in flight. Every decision is one
atomic Lua script (``fanflow/ratelimit/lua``) on Redis server time — no WATCH loops, no polled
locks, no client clocks:

- **requests**: a sliding-window log — a sorted set of admissions scored by admission time (ms).
  A call is admitted when fewer than ``requests`` entries are younger than ``window_s``, so no
  window of that length ever holds more than ``requests`` starts. Entries are trimmed as they age.
- **tokens**: a sliding log with each entry's input/output amounts and running totals. ``acquire``
  reserves the estimate, ``settle`` corrects the entry and the totals to the real usage (the
  difference goes back to, or comes out of, the window), ``release`` removes it. A reservation
  larger than the limit itself is admitted only into an otherwise empty window (it fills it).
- **concurrency**: a sorted set of leases scored by expiry. ``settle``/``release`` free the slot;
  a worker that dies mid-call loses it when its lease lapses (``lease_s``); ``renew`` extends.
- **cool-down**: ``cooldown(key, s)`` refuses every acquire on the key until it ends.
- **provider headers**: ``observe_headers`` turns OpenAI's and Anthropic's rate-limit headers into
  cool-downs and "debt" (usage the provider saw beyond ours), see ``Limiter.observe_headers``.

``acquire(keys)`` admits on every limit of a call in one round trip, all or none. Refused, it says
which key and limit refused and how long to wait: the earliest time every limit would admit (old
entries leaving the window, a debt or cool-down ending), with jitter added during a cool-down.

The keys of one limit key share a Redis Cluster hash tag (``fanflow/ratelimit/keys.py``), but an
acquire on several limit keys touches several slots: all-or-none across keys needs a non-cluster
Redis (or one limit key per call on a cluster).
"""

from fanflow.ratelimit.headers import ProviderWindow, RateLimitHeaders, parse_duration, parse_headers
from fanflow.ratelimit.limiter import Limiter
from fanflow.ratelimit.models import Admission, Limit, LimitStatus, Reason, Refusal

__all__ = [
    "Admission",
    "Limit",
    "LimitStatus",
    "Limiter",
    "ProviderWindow",
    "RateLimitHeaders",
    "Reason",
    "Refusal",
    "parse_duration",
    "parse_headers",
]
