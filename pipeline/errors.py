"""One root exception and a handful of subclasses by concern.

Library code raises these; only ``tasks.py`` turns them into exit codes.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error vmi-pipeline reports to a user.

    ``hint`` says how to fix it, where we know.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(PipelineError):
    """An appliance definition, settings file or option is wrong.

    ``problems`` lists every problem found, each naming its file and field.
    """

    def __init__(self, problems: list[str] | str, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems), hint)


class ToolNotFound(PipelineError):
    """A program the pipeline needs is not installed."""


class CommandError(PipelineError):
    """A program exited non-zero; carries its argv, exit code and the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, output_tail: str, hint: str | None = None) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail
        shown = " ".join(argv)
        message = f"{argv[0]} failed with exit code {returncode}: {shown}"
        if output_tail.strip():
            message += "\n" + "\n".join("  | " + line for line in output_tail.rstrip().splitlines())
        super().__init__(message, hint)


class BuildError(PipelineError):
    """A build step failed; ``step`` names it and ``log_tail`` shows the end of its log."""

    def __init__(self, step: str, message: str, log_tail: str = "", hint: str | None = None) -> None:
        self.step = step
        self.log_tail = log_tail
        text = f"build step '{step}' failed: {message}"
        if log_tail.strip():
            text += "\n  last lines of the log:\n" + "\n".join("  | " + x for x in log_tail.rstrip().splitlines())
        super().__init__(text, hint)


class ArtifactError(PipelineError):
    """An image, OVA, manifest or checksum is not what it should be."""


class VerificationError(PipelineError):
    """A verification found problems; ``problems`` holds one line per problem."""

    def __init__(self, subject: str, problems: list[str]) -> None:
        self.subject = subject
        self.problems = list(problems)
        super().__init__(f"{subject}: " + "; ".join(problems) if problems else subject)


class UploadError(PipelineError):
    """A repository upload failed or what landed does not match what was sent."""


class CatalogueError(PipelineError):
    """The catalogue refused a request or is unreachable."""


class PolicyError(PipelineError):
    """An image fails the endorsement policy, or an action is not allowed."""


class ReceiptError(PipelineError):
    """A step's receipt is missing (the step never finished) or cannot be read back."""
