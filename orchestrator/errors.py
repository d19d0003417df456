"""The one error tree of Recall.

    RecallError
     ├── ConfigError              settings or policy that cannot work; fix the configuration
     │    └── NotConfigured       a public endpoint whose secret is unset or a placeholder
     ├── JourneyError             a journey/policy/template file is invalid (carries Problems)
     ├── InputError               a bad row, event or request; names what and where
     │    └── SignatureError      a webhook/callback whose signature or timestamp is wrong
     ├── NotFoundError            a named journey, user, touch or link does not exist
     ├── StoreError               the database refused something it should not have
     └── ChannelError             a provider call failed; raised by channel adapters only
          ├── ChannelRetryable    rate limit, timeout, 5xx, busy: retry with back-off
          ├── ChannelRecipient    this recipient cannot be reached: fail the touch, no retry
          ├── ChannelConfig       credentials/permissions wrong: stop the step, say it loudly
          └── ChannelUnknown      the call may or may not have happened: reconcile, never resend

Control flow is not an error: ``RetryLater(delay_s)`` asks the caller to try again later.
"""

from __future__ import annotations

from dataclasses import dataclass


class RecallError(Exception):
    """Root of every error Recall raises on purpose."""


class ConfigError(RecallError):
    pass


class NotConfigured(ConfigError):
    """A public endpoint cannot check its callers: its secret is unset or the sandbox
    placeholder outside the embedded stack (HTTP 503: the sender retries later)."""


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in one file, printed as ``FILE:LINE:COL: message`` (1-based)."""

    file: str
    line: int
    col: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


class JourneyError(RecallError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(RecallError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class SignatureError(InputError):
    pass


class NotFoundError(RecallError):
    pass


class StoreError(RecallError):
    pass


class ChannelError(RecallError):
    def __init__(self, message: str, *, code: str | int | None = None, provider: str = "") -> None:
        self.code = code
        self.provider = provider
        super().__init__(message)


class ChannelRetryable(ChannelError):
    def __init__(
        self,
        message: str,
        *,
        code: str | int | None = None,
        provider: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, code=code, provider=provider)


class ChannelRecipient(ChannelError):
    pass


class ChannelConfig(ChannelError):
    pass


class ChannelUnknown(ChannelError):
    pass


class RetryLater(Exception):  # noqa: N818 - a signal, not an error
    """Control-flow signal: the work cannot proceed now; try again after ``delay_s`` seconds."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        self.delay_s = delay_s
        self.reason = reason
        super().__init__(f"retry in {delay_s:.1f}s: {reason}")
