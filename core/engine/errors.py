"""waylay's error vocabulary: every user-facing failure carries its exit code (docs/architecture.md
§3)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad usage or config
EXIT_TARGET = 3  # target not found or not reachable
EXIT_PRIVILEGE = 4  # missing privilege or system tool


class WaylayError(Exception):
    """A failure to report to the user as one clear message, never a traceback."""

    exit_code: int = 1


class UsageError(WaylayError):
    """The command line is wrong."""

    exit_code = EXIT_USAGE


class ConfigError(WaylayError):
    """A config file (or a filter given another way) is wrong.

    The message names the file, the key path and, where known, line and column, in the
    form compilers use: ``steal.json:3:14: feature.network.incoming.mode: ...``.
    """

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        key_path: str = "",
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.message = message
        self.key_path = key_path
        self.source = source
        self.line = line
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.source or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.key_path}:" if self.key_path else ""
        return f"{where}:{key} {self.message}"


class TargetError(WaylayError):
    """The target does not exist or cannot be reached."""

    exit_code = EXIT_TARGET


class PrivilegeError(WaylayError):
    """A privilege or a system tool is missing; the message says what to install or run."""

    exit_code = EXIT_PRIVILEGE


class AgentError(WaylayError):
    """The agent refused a request or the link to it failed."""

    exit_code = EXIT_TARGET
