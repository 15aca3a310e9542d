"""fanflow: fan-out / fan-in of model calls, agent runs and Python callables on Celery + Redis.

Declare a ``FanOut`` of ``Subtask`` specs with a merge strategy and a failure policy, submit it with
``Client.submit``, and ``wait`` for the ``JobResult``.
"""

from __future__ import annotations

from fanflow.client import Client, JobHandle
from fanflow.config import Settings
from fanflow.errors import (
    BackendError,
    ConfigError,
    FanflowError,
    JobFailedError,
    JobNotFoundError,
    JobTimeoutError,
    MergeConflictError,
    MergeError,
    SpecError,
    TransientError,
)
from fanflow.result import ErrorInfo, JobResult, JobStatus, OutcomeStatus, SubtaskOutcome, Usage
from fanflow.spec import (
    AgentRun,
    AllOrNothing,
    BestEffort,
    ConcatenateMerge,
    CustomMerge,
    FanOut,
    GitMerge,
    KeyMerge,
    LLMCall,
    PyCall,
    Quorum,
    RetryPolicy,
    Subtask,
    SuccessCriteria,
    SynthesizeMerge,
)
from fanflow.spec_files import load_spec

__all__ = [
    "AgentRun",
    "AllOrNothing",
    "BackendError",
    "BestEffort",
    "Client",
    "ConcatenateMerge",
    "ConfigError",
    "CustomMerge",
    "ErrorInfo",
    "FanOut",
    "FanflowError",
    "GitMerge",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobResult",
    "JobStatus",
    "JobTimeoutError",
    "KeyMerge",
    "LLMCall",
    "MergeConflictError",
    "MergeError",
    "OutcomeStatus",
    "PyCall",
    "Quorum",
    "RetryPolicy",
    "Settings",
    "SpecError",
    "Subtask",
    "SubtaskOutcome",
    "SuccessCriteria",
    "SynthesizeMerge",
    "TransientError",
    "Usage",
    "load_spec",
]

__version__ = "0.1.0"
