"""The `actrec` command line: thin Click commands that parse options and call library functions."""

from __future__ import annotations

import sys

import click

from actrec import __version__
from actrec.errors import ActrecError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="actrec")
def cli() -> None:
    """Two-stream action recognition: videos -> frames -> TV-L1 flow -> STILT / CoT-LSTM -> fusion."""


# --- commands: frames and manifests (pipeline/, data_manifests/) ---

# --- commands: optical flow (pipeline/tvl1.py) ---

# --- commands: models, training, evaluation ---

# --- commands: fusion (fusion/) ---


def main() -> None:
    """Console entry point: run the group and turn project errors into one-line messages and exit codes."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ActrecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise


if __name__ == "__main__":
    main()
