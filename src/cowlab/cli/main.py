"""The `cowlab` command: the group and its global --root; each command group is a module of this
package that parses arguments and calls the library."""

from __future__ import annotations

import os
import sys

import click

from cowlab import __version__
from cowlab.base.errors import CowlabError
from cowlab.cli import bench, conformance, containers, drivers, housekeeping, images, kernels, lab, report
from cowlab.cli.common import err


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root", envvar="COWLAB_ROOT", metavar="DIR", help="State directory (default /var/lib/cowlab, or $COWLAB_ROOT)."
)
@click.version_option(__version__)
@click.pass_context
def cli(ctx, root):
    """Measure what copy-on-write storage under container engines really costs."""
    ctx.obj = {"root": root}


for command in (
    drivers.drivers_cmd,
    images.image,
    containers.container,
    bench.bench,
    bench.show_cmd,
    housekeeping.cleanup_cmd,
    housekeeping.status_cmd,
    lab.lab,
    report.report_cmd,
    report.compare_cmd,
    conformance.conformance_cmd,
    kernels.kernels_cmd,
):
    cli.add_command(command)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except CowlabError as e:
        err.print(f"cowlab: error: {e}", markup=False, highlight=False, soft_wrap=True)  # one line
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: one line, and the traceback on request
        if os.environ.get("COWLAB_DEBUG"):
            raise
        err.print(
            f"cowlab: internal error: {type(e).__name__}: {e} (COWLAB_DEBUG=1 shows the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(3)


if __name__ == "__main__":
    main()
