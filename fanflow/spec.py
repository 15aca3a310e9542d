"""The specs a producer declares: what to fan out, how to merge, what to do when branches fail.

Every model is frozen and forbids unknown fields, so a typo in a YAML file is an error that names
the field instead of a silently ignored setting. ``validate_fanout`` / ``load_spec`` turn pydantic's
``ValidationError`` into a ``SpecError`` whose message lists every bad field by its dotted path.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fanflow.errors import SpecError
from fanflow.imports import check_import_path

__all__ = [
    "RESERVED_VARS",
    "AgentRun",
    "AllOrNothing",
    "BestEffort",
    "Budget",
    "ConcatenateMerge",
    "CustomMerge",
    "FailurePolicy",
    "FanOut",
    "GitMerge",
    "KeyMerge",
    "LLMCall",
    "MergeSpec",
    "Message",
    "PyCall",
    "Quorum",
    "RetryPolicy",
    "Subtask",
    "SuccessCriteria",
    "SynthesizeMerge",
    "TaskSpec",
    "ToolSpec",
    "format_validation_error",
    "validate_fanout",
]

ImportPath = Annotated[str, AfterValidator(check_import_path)]
BranchKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"),
]
#: Template variables fanflow fills in itself; a subtask's ``vars`` cannot redefine them.
RESERVED_VARS = frozenset({"context", "key", "results", "flagged"})
TemplateName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_\-]+:[^\s]+$")]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- what a branch runs ---------------------------------------------------------------------------


class PyCall(_Spec):
    """Call a Python function on the worker: ``function(**kwargs)``.

    The function must be importable on the workers and return something JSON-serializable.
    With ``pass_context`` the fan-out's shared ``context`` is passed as the keyword ``context``;
    with ``pass_inputs`` a pipeline node gets its predecessors' outputs as the keyword ``inputs``
    (``{node id: output}`` in declared order).
    """

    kind: Literal["python"] = "python"
    function: ImportPath
    kwargs: dict[str, JsonValue] = Field(default_factory=dict)
    pass_context: bool = False
    pass_inputs: bool = False


class Message(_Spec):
    """One chat message of an ``LLMCall``; ``content`` may use ``{context}``-style variables."""

    role: Literal["system", "user", "assistant"]
    content: str


class ToolSpec(_Spec):
    """One tool of an ``LLMCall``'s tool manifest (JSON-schema parameters)."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
    description: str = ""
    parameters: dict[str, JsonValue] = Field(default_factory=dict)


class LLMCall(_Spec):
    """A model-API call. ``model`` is ``provider:name`` (``openai:gpt-4o-mini``)."""

    kind: Literal["llm"] = "llm"
    model: ModelName
    prompt: str | None = None
    messages: list[Message] | None = None
    system: str | None = None
    max_tokens: int = Field(1024, gt=0, le=1_000_000)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    tools: list[ToolSpec] = Field(default_factory=list)
    output_schema: dict[str, JsonValue] | None = None

    @model_validator(mode="after")
    def _one_of_prompt_or_messages(self) -> LLMCall:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class AgentRun(_Spec):
    """A CLI coding-agent run: an argv template (never a shell string) in a workdir or a git worktree.

    Each ``{key}``, ``{context}``, ``{prompt}`` and ``Subtask.vars`` substitution stays inside its
    own argument. With ``repo`` and ``worktree: true`` each branch works in its own git worktree on
    a branch of its own made from ``ref``; ``env`` names the environment variables the agent gets
    (nothing else of the worker's environment but PATH, HOME, LANG and the like).
    """

    kind: Literal["agent"] = "agent"
    argv: list[str] = Field(min_length=1)
    prompt: str | None = None
    repo: str | None = None
    ref: str = "HEAD"
    worktree: bool = False
    keep_worktree: bool = False
    workdir: str | None = None
    env: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list
    )
    allowed_tools: list[str] = Field(default_factory=list)
    timeout_s: float | None = Field(None, gt=0)
    kill_grace_s: float = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _worktree_needs_repo(self) -> AgentRun:
        if self.worktree and self.repo is None:
            raise ValueError("worktree: true needs 'repo' (a path or a git URL)")
        if self.worktree and self.workdir is not None:
            raise ValueError("give 'workdir' or 'worktree: true', not both")
        return self


TaskSpec = Annotated[PyCall | LLMCall | AgentRun, Field(discriminator="kind")]


# --- one branch -----------------------------------------------------------------------------------


class RetryPolicy(_Spec):
    """Retries inside the branch, with exponential backoff and jitter.

    ``retry_on`` names exception classes (by name, matched against the whole MRO) that are worth
    another attempt. ``TransientError`` (network trouble, 5xx, 429) is always retried; a server's
    ``Retry-After`` overrides the computed backoff.
    """

    attempts: int = Field(1, ge=1, le=50)
    backoff_s: float = Field(1.0, ge=0)
    max_backoff_s: float = Field(60.0, ge=0)
    jitter: bool = True
    retry_on: list[str] = Field(default_factory=lambda: ["TimeoutError", "ConnectionError"])

    def delay_s(self, attempt: int, rand: float) -> float:
        """Backoff before attempt ``attempt + 1`` (``attempt`` counts from 1); ``rand`` in [0, 1)."""
        base = float(min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1)))
        # Full jitter keeps a burst of failing branches from retrying in lock step.
        return base * rand if self.jitter else base


class SuccessCriteria(_Spec):
    """What a branch's output must satisfy to count as succeeded."""

    not_empty: bool = False
    required_fields: list[str] = Field(default_factory=list)
    contains: list[str] = Field(default_factory=list)
    max_chars: int | None = Field(None, gt=0)


class Subtask(_Spec):
    """One branch of a fan-out: its own spec, limits, timeout, retries and success criteria."""

    key: BranchKey
    run: TaskSpec
    vars: dict[TemplateName, JsonValue] = Field(
        default_factory=dict, description="this branch's own template variables ({name} in prompts)"
    )
    limits: list[str] = Field(default_factory=list)
    timeout_s: float | None = Field(None, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    success: SuccessCriteria | None = None
    required: bool = False
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("vars")
    @classmethod
    def _no_reserved_vars(cls, variables: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return check_own_vars(variables, RESERVED_VARS)


def check_own_vars(variables: dict[str, JsonValue], reserved: frozenset[str]) -> dict[str, JsonValue]:
    """``variables`` when none of them redefines a variable fanflow fills in itself.

    Raises:
        ValueError: naming the reserved names used.
    """
    taken = sorted(set(variables) & reserved)
    if taken:
        raise ValueError(f"{', '.join(taken)} is filled in by fanflow; choose another variable name")
    return variables


# --- merge ----------------------------------------------------------------------------------------


class ConcatenateMerge(_Spec):
    """Outputs in declared order (never completion order): a list, or one string with ``separator``."""

    strategy: Literal["concatenate"] = "concatenate"
    separator: str | None = None


class KeyMerge(_Spec):
    """Merge by entity.

    Without ``field``: ``{branch key: output}``. With ``field``: every output is an object (or a list
    of objects) carrying ``field``; items are merged into ``{entity: item}``. When two branches give
    the same entity, ``on_conflict`` decides: ``error`` fails the merge naming both branches,
    ``first`` / ``last`` keep one (declared order), ``update`` merges the objects' fields (later
    branches win per field), ``collect`` keeps a list of every item.
    """

    strategy: Literal["key_merge"] = "key_merge"
    field: str | None = None
    on_conflict: Literal["error", "first", "last", "update", "collect"] = "error"


class SynthesizeMerge(_Spec):
    """A model call that receives every branch output (as ``{results}``) and writes the merge."""

    strategy: Literal["synthesize"] = "synthesize"
    run: LLMCall


class CustomMerge(_Spec):
    """``function(outcomes, context=..., **options)`` by import path; gets succeeded outcomes in order."""

    strategy: Literal["custom"] = "custom"
    function: ImportPath
    options: dict[str, JsonValue] = Field(default_factory=dict)


GitBranchName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./\-]*$")
]


class GitMerge(_Spec):
    """Merge every succeeded agent branch's git work onto one integration branch, in declared order.

    The integration branch is made from ``ref`` in ``repo`` and kept; each succeeded branch's
    ``git_branch`` is merged onto it (``--no-ff``) in a temporary worktree, so the repository itself
    is never left mid-merge. A branch whose merge conflicts is reported with its conflicting files
    and the earlier branches that touched them, and left out; the job does not fail for it.

    ``repo`` and ``ref`` default to those of the fan-out's agent subtasks (which must agree);
    ``branch`` to ``fanflow/merge-<job name>-<random>``. The fan-out fills them in when it is
    validated, so the stored spec names the branch the merge will write.
    """

    strategy: Literal["git_merge"] = "git_merge"
    repo: str | None = None
    ref: str | None = None
    branch: GitBranchName | None = None

    @field_validator("branch")
    @classmethod
    def _branch_is_a_branch_name(cls, branch: str | None) -> str | None:
        if branch is not None and (
            ".." in branch or "//" in branch or "/." in branch or branch.endswith(("/", ".", ".lock"))
        ):
            raise ValueError(f"{branch!r} is not a valid git branch name")
        return branch

    def filled_in(self, job_name: str, subtasks: list[Subtask]) -> GitMerge:
        """This merge with ``repo``, ``ref`` and ``branch`` filled in from the fan-out.

        Raises:
            ValueError: no ``repo`` and no agent subtask names one, or the agent subtasks name
                several repositories (or refs) and this merge does not say which.
        """
        runs = [s.run for s in subtasks if isinstance(s.run, AgentRun) and s.run.repo is not None]
        repo = self.repo
        if repo is None:
            repos = sorted({run.repo for run in runs if run.repo is not None})
            if not repos:
                raise ValueError("git_merge needs 'repo': no agent subtask names one, so set merge.repo")
            if len(repos) > 1:
                listed = ", ".join(repr(name) for name in repos)
                raise ValueError(f"the agent subtasks name {len(repos)} repositories ({listed}): "
                                 "set merge.repo to the one to merge in")  # fmt: skip
            repo = repos[0]
        ref = self.ref
        if ref is None:
            refs = sorted({run.ref for run in runs if run.repo == repo})
            if len(refs) > 1:
                listed = ", ".join(repr(name) for name in refs)
                raise ValueError(f"the agent subtasks of {repo!r} start from {len(refs)} refs ({listed}): "
                                 "set merge.ref to the one to merge onto")  # fmt: skip
            ref = refs[0] if refs else "HEAD"
        branch = self.branch
        if branch is None:
            slug = re.sub(r"[^a-z0-9]+", "-", job_name.lower()).strip("-")[:60].strip("-") or "job"
            branch = f"fanflow/merge-{slug}-{secrets.token_hex(3)}"
        return self.model_copy(update={"repo": repo, "ref": ref, "branch": branch})


MergeSpec = Annotated[
    ConcatenateMerge | KeyMerge | SynthesizeMerge | CustomMerge | GitMerge, Field(discriminator="strategy")
]


# --- failure policy -------------------------------------------------------------------------------


class AllOrNothing(_Spec):
    """The first final failure cancels the branches that have not finished; the job fails."""

    policy: Literal["all_or_nothing"] = "all_or_nothing"


class BestEffort(_Spec):
    """Merge what succeeded; flag each failed branch with its error."""

    policy: Literal["best_effort"] = "best_effort"


class Quorum(_Spec):
    """Succeed when enough branches (a count and/or a fraction) and every ``required`` one succeeded."""

    policy: Literal["quorum"] = "quorum"
    min_succeeded: int | None = Field(None, ge=1)
    min_fraction: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _needs_threshold(self) -> Quorum:
        if self.min_succeeded is None and self.min_fraction is None:
            raise ValueError("give 'min_succeeded' or 'min_fraction' (or both)")
        return self


FailurePolicy = Annotated[AllOrNothing | BestEffort | Quorum, Field(discriminator="policy")]


class Budget(_Spec):
    """A ceiling on what the whole job may spend."""

    max_tokens: int | None = Field(None, gt=0)
    max_cost_usd: float | None = Field(None, gt=0)


# --- the fan-out ----------------------------------------------------------------------------------


class FanOut(_Spec):
    """A fan-out of independent subtasks with a shared context, a merge and a failure policy."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    context: str | dict[str, JsonValue] | None = None
    subtasks: list[Subtask] = Field(min_length=1)
    merge: MergeSpec = Field(default_factory=ConcatenateMerge)
    failure: FailurePolicy = Field(default_factory=AllOrNothing)
    max_concurrency: int | None = Field(None, ge=1)
    budget: Budget | None = None
    deadline_s: float | None = Field(None, gt=0)
    idempotency_key: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None

    @field_validator("subtasks")
    @classmethod
    def _unique_keys(cls, subtasks: list[Subtask]) -> list[Subtask]:
        seen: dict[str, int] = {}
        for index, subtask in enumerate(subtasks):
            if subtask.key in seen:
                raise ValueError(
                    f"duplicate key {subtask.key!r} at subtasks.{index}.key "
                    f"(first used at subtasks.{seen[subtask.key]}.key); keys must be unique"
                )
            seen[subtask.key] = index
        return subtasks

    @field_validator("merge")
    @classmethod
    def _fill_in_git_merge(cls, merge: MergeSpec, info: ValidationInfo) -> MergeSpec:
        subtasks = info.data.get("subtasks")
        if not isinstance(merge, GitMerge) or subtasks is None:  # bad subtasks are reported on their own
            return merge
        return merge.filled_in(str(info.data.get("name", "")), subtasks)

    @model_validator(mode="after")
    def _quorum_is_reachable(self) -> FanOut:
        if isinstance(self.failure, Quorum) and (self.failure.min_succeeded or 0) > len(self.subtasks):
            raise ValueError(
                f"failure.min_succeeded={self.failure.min_succeeded} but there are only "
                f"{len(self.subtasks)} subtasks"
            )
        return self

    def subtask(self, key: str) -> Subtask:
        """The subtask with this key (``KeyError`` if none); a dict lookup, so O(1) per branch."""
        # The index is tied to the very list it was built from, so a model_copy with other
        # subtasks never answers from a stale index.
        cached = self.__dict__.get("_subtask_index")
        if cached is None or cached[0] is not self.subtasks:
            cached = (self.subtasks, {subtask.key: subtask for subtask in self.subtasks})
            self.__dict__["_subtask_index"] = cached
        return cached[1][key]


def format_validation_error(error: ValidationError, *, source: str | None = None) -> str:
    """One line per bad field: ``subtasks.1.run.function: <what is wrong>``."""
    lines = []
    for item in error.errors(include_url=False):
        # Drop the discriminator tags pydantic puts in the path ("python", "key_merge" ...).
        loc = ".".join(str(part) for part in item["loc"] if not _is_union_tag(part))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{loc or '(top level)'}: {message}")
    prefix = f"{source}: " if source else ""
    return prefix + "; ".join(lines)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in {
        "python", "llm", "agent", "concatenate", "key_merge", "synthesize", "custom", "git_merge",
        "all_or_nothing", "best_effort", "quorum",
    }  # fmt: skip


def validate_fanout(data: FanOut | dict[str, Any], *, source: str | None = None) -> FanOut:
    """Validate a fan-out given as a model or a plain dict.

    Raises:
        SpecError: naming every bad field by its dotted path.
    """
    if isinstance(data, FanOut):
        return data
    if not isinstance(data, dict):
        raise SpecError(
            f"{source + ': ' if source else ''}a spec must be a mapping, not {type(data).__name__}"
        )
    try:
        return FanOut.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        field = ".".join(str(p) for p in first if not _is_union_tag(p)) or None
        raise SpecError(format_validation_error(exc, source=source), field=field) from None
