"""The ``actrec`` Click group; project errors (ActrecError) become one-line messages with their exit codes."""

from __future__ import annotations

import click

from actrec import __version__
from actrec.errors import ActrecError


class ProjectError(click.ClickException):
    """A project error shown as one line (``error: ...``) with the error's exit code."""

    def __init__(self, error: ActrecError) -> None:
        super().__init__(str(error))
        self.exit_code = error.exit_code

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class ActrecGroup(click.Group):
    """The command group: project errors become one-line messages with their exit codes, also under CliRunner."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ActrecError as exc:
            raise ProjectError(exc) from None


@click.group(cls=ActrecGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="actrec")
def cli() -> None:
    """Two-stream action recognition: videos -> frames -> TV-L1 flow -> STILT / CoT-LSTM -> fusion."""
