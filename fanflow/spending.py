"""Admitting one call against the shared limits and the job's budget, then settling what it spent.

Used by the branch runner for every attempt and by the merge for a synthesis call, so both go
through the same path (DESIGN §4, §7):

1. the limits (``Gate``): every limit key of the call in one round trip, all or none, reserving
   its estimated tokens — or a deferral / a wait in the slot;
2. the budget (``reserve_budget.lua``): the call's estimated tokens and dollars are reserved
   against the job's ``budget``; while open reservations fill it the call waits (they settle
   soon), and once the real spend leaves no room for this estimate the budget is exhausted — the
   job's cancel flag says ``budget`` and branches not yet started are cancelled;
3. after the call, its real usage is counted once in the job's spend (per model) and its budget
   reservation settled (``record_spend.lua``), the limiter's reservation settled to the same
   usage, and the provider's rate-limit headers fed to the limiter.

A call that failed gives its reservations back.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fanflow.admission import CANCELLED, Cancelled, Deferral, Gate
from fanflow.executors import Execution
from fanflow.ratelimit import Admission
from fanflow.result import Usage
from fanflow.spec import Budget
from fanflow.store import JobStore

__all__ = ["BUDGET_EXHAUSTED", "BudgetExhausted", "Spending", "Ticket"]

logger = logging.getLogger("fanflow")

#: How long a budget reservation lives without a settle (its worker died) before it is given back.
RESERVATION_LEASE_S = 900.0
#: Longest single sleep while the budget waits for running calls to settle.
_BUDGET_POLL_S = 0.5


class BudgetExhausted:
    """The job's budget has no room for this call: the call is not made."""


BUDGET_EXHAUSTED = BudgetExhausted()


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call: its limiter admission and its budget reservation, if any."""

    admission: Admission | None
    reservation: str | None
    model: str | None


class Spending:
    """Admits calls on limits and budget; records and settles what they spent."""

    def __init__(self, store: JobStore, gate: Gate | None) -> None:
        self.store = store
        self.gate = gate

    def admit(
        self,
        job_id: str,
        keys: Sequence[str],
        estimate: Usage,
        *,
        budget: Budget | None,
        model: str | None,
        may_defer: bool,
        cancelled: Callable[[], bool],
        branch_key: str = "",
    ) -> Ticket | Deferral | Cancelled | BudgetExhausted:
        """Admit one call: a ``Ticket``, or why not (deferral, cancellation, exhausted budget)."""
        while True:
            admission = None
            if self.gate is not None and keys:
                verdict = self.gate.admit(keys, estimate, may_defer=may_defer, cancelled=cancelled,
                                          job_id=job_id, branch_key=branch_key)  # fmt: skip
                if isinstance(verdict, (Deferral, Cancelled)):
                    return verdict
                admission = verdict
            if budget is None:
                return Ticket(admission, None, model)
            # A call that cannot say what it will spend (an agent: estimate zero) is still stopped
            # once the budget is spent; one that can reserves its estimate.
            reservation = os.urandom(9).hex()
            answer = self.store.reserve_budget(
                job_id, reservation, estimate, budget, lease_s=RESERVATION_LEASE_S
            )
            if answer == 1:
                return Ticket(admission, reservation, model)
            if self.gate is not None:
                self.gate.release(admission)
            if answer < 0:
                return BUDGET_EXHAUSTED
            # Running calls hold the rest of the budget: wait for them to settle (without holding a
            # concurrency slot), then ask again.
            time.sleep(_BUDGET_POLL_S * (0.5 + random.random()))
            if cancelled():
                return CANCELLED

    def settle(
        self, job_id: str, ticket: Ticket, execution: Execution, *, key: str, count: bool = True
    ) -> bool:
        """The call ran: settle its reservations, learn from its headers, and count its real spend
        in the job's usage — now, or (``count`` False, no budget reservation to settle) not: the
        caller counts it with the branch's outcome (one round trip fewer per call). Returns whether
        it was counted."""
        usage = execution.usage
        model = execution.model or ticket.model
        counted = ticket.reservation is not None or (count and not usage.is_zero)
        if counted:
            self.store.record_spend(job_id, model or "other", usage, reservation=ticket.reservation, key=key)
        if self.gate is not None:
            self.gate.settle(ticket.admission, usage)
            if execution.headers and model is not None:
                self.gate.observe(model, execution.headers)
        return counted

    def release(self, job_id: str, ticket: Ticket, *, key: str) -> None:
        """The call failed before it spent: give its reservations back."""
        if ticket.reservation is not None:
            self.store.record_spend(job_id, ticket.model or "other", Usage(), reservation=ticket.reservation,
                                    key=key)  # fmt: skip
        if self.gate is not None:
            self.gate.release(ticket.admission)
