"""Every error fanflow raises, in one tree.

::

    FanflowError
    ├── SpecError              a spec is invalid; nothing was enqueued (names the field)
    ├── ConfigError            settings are missing or inconsistent
    ├── BackendError           Redis / the broker could not be reached or answered badly
    ├── PoisonMessageError     a queue message is not a well-formed fanflow task (rejected, logged)
    ├── JobNotFoundError       no job with that id (or its results expired)
    ├── JobTimeoutError        ``wait()`` gave up before the job finished
    ├── JobFailedError         the job finished ``failed`` (raised by ``JobResult.raise_for_status``)
    ├── MergeError             the declared merge could not combine the outputs
    │   └── MergeConflictError key_merge met the same entity twice under ``on_conflict: error``
    └── ExecutorError          a branch's work failed (recorded in its outcome, never raised past a task)
        ├── TransientError     worth retrying (network, 5xx, 429); always retryable
        │   └── RateLimitedError  the provider said 429 / overloaded: the branch's limit keys cool
        │                      down for every worker; the attempt is not counted
        ├── BranchTimeoutError the branch ran past its ``timeout_s``
        ├── DeadlineExceededError the job's ``deadline_s`` passed before the branch could finish
        ├── SuccessCriteriaError  the output did not meet the branch's ``success`` criteria
        │   └── OutputValidationError  a model's answer failed its schema or criteria: asked
        │                      again with the reasons fed back, up to its attempts
        ├── ProviderError      a model provider refused the request for good (400, 401, 404 ...)
        ├── BudgetExhaustedError  the job's token / dollar budget is spent: the call was not made
        ├── DeliveryCapError   the branch's message came back too often (its worker kept dying)
        └── BranchFailedError  raised by a branch task *after* its failed outcome is recorded, so
                               Celery (and Flower) see a FAILURE with the branch's error

Branch tasks never raise these to Celery: they are turned into an ``ErrorInfo`` inside the
branch's ``SubtaskOutcome`` so that the chord always completes and the merge applies the policy.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BranchFailedError",
    "BranchTimeoutError",
    "BudgetExhaustedError",
    "ConfigError",
    "DeadlineExceededError",
    "DeliveryCapError",
    "ExecutorError",
    "FanflowError",
    "JobFailedError",
    "JobNotFoundError",
    "JobTimeoutError",
    "MergeConflictError",
    "MergeError",
    "OutputValidationError",
    "PoisonMessageError",
    "ProviderError",
    "RateLimitedError",
    "SpecError",
    "SuccessCriteriaError",
    "TransientError",
]


class FanflowError(Exception):
    """Base of every fanflow error."""


class SpecError(FanflowError, ValueError):
    """A spec is invalid. Raised before anything is enqueued.

    The message names every bad field by its dotted path (``subtasks.2.run.function: ...``).

    Attributes:
        field: dotted path of the first offending field, when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ConfigError(FanflowError):
    """Settings are missing or inconsistent."""


class BackendError(FanflowError):
    """Redis or the broker could not be reached, or answered something unexpected."""


class PoisonMessageError(FanflowError):
    """A message on a fanflow queue is not a well-formed fanflow task; it is rejected, never run."""


class JobNotFoundError(FanflowError, LookupError):
    """No job with that id exists (or its results expired)."""


class JobTimeoutError(FanflowError, TimeoutError):
    """``JobHandle.wait()`` gave up before the job finished."""


class JobFailedError(FanflowError):
    """The job finished with status ``failed``."""


class MergeError(FanflowError):
    """The declared merge strategy could not combine the branch outputs."""


class MergeConflictError(MergeError):
    """``key_merge`` found the same entity in two branches under ``on_conflict: error``."""


class ExecutorError(FanflowError):
    """A branch's work failed. Recorded in its outcome; never raised past a task."""

    retryable: bool = False


class TransientError(ExecutorError):
    """A failure worth retrying (network error, 5xx, 429). Always retryable.

    Attributes:
        retry_after_s: the server's ``Retry-After``, honoured by the branch's backoff.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class RateLimitedError(TransientError):
    """The provider refused the call for now (HTTP 429, or an overload answer).

    The branch runner cools the branch's limit keys down for every worker for ``retry_after_s``
    (or a default) and tries again without counting an attempt.
    """


class BranchTimeoutError(ExecutorError, TimeoutError):
    """The branch ran past its ``timeout_s``."""


class DeadlineExceededError(ExecutorError):
    """The job's ``deadline_s`` passed before this branch could finish."""


class SuccessCriteriaError(ExecutorError):
    """The branch's output did not meet its ``success`` criteria."""


class OutputValidationError(SuccessCriteriaError):
    """A model's answer failed its ``output_schema`` (or its ``success`` criteria).

    A model branch is asked again with the reasons fed back, up to its attempts.

    Attributes:
        raw: the model's answer text, shown to it on the next attempt.
    """

    def __init__(self, message: str, *, raw: str | None = None) -> None:
        self.raw = raw
        super().__init__(message)


class ProviderError(ExecutorError):
    """A model provider refused the request in a way a retry will not change (400, 401, 404 ...)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class BudgetExhaustedError(ExecutorError):
    """The job's budget (tokens or dollars) is spent: this call was not made."""


class DeliveryCapError(ExecutorError):
    """The branch's message was delivered more often than the cap (its worker kept dying)."""


class BranchFailedError(ExecutorError):
    """A branch failed (or was cancelled); its outcome is already recorded in the job store.

    Raised by the branch task only so that Celery's state and Flower show ``FAILURE`` with the
    branch's own error; the chord's error callback still runs the merge, which reads the store.
    """
