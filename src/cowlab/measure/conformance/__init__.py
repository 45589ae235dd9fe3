"""Conformance: does a driver's container root behave like a plain directory?

A benchmark of a union is only worth its numbers if the union behaves like a container's root
filesystem. This suite, in the spirit of containerd's snapshotter test suite and moby's
graphdriver tests (written from their ideas, not their code), builds images from spec ops, lets a
driver import them and create containers, and compares what the container shows with an oracle:
a plain directory on the host's filesystem.

Its parts, one module each:

- catalogue: the cases, as data (layers of spec ops, container-side actions, extra checks);
- oracle: the spec ops applied to a plain directory with ordinary system calls (and why the
  oracle does not share the tar pipeline with the drivers);
- compare: two trees scanned and compared (what is compared, and what is not);
- actions: the container-side actions, carried out alike on a container and an oracle copy;
- runner: a driver session, a case on it (EXDEV renames, root mode, read-only images), and the
  suite over every available driver.

`cowlab conformance [--driver NAME ...]` runs it on every driver available here.
"""

from cowlab.measure.conformance.catalogue import CAP_RENAME_DIR_EXDEV, CAP_XATTRS, CASES, Act, Case, cases
from cowlab.measure.conformance.compare import compare, scan
from cowlab.measure.conformance.oracle import reference_apply
from cowlab.measure.conformance.runner import (
    DriverSession,
    ImageCache,
    Result,
    available,
    declares_rename_dir_exdev,
    prebuild,
    run_case,
    run_driver,
    run_suite,
)

__all__ = [
    "CAP_RENAME_DIR_EXDEV",
    "CAP_XATTRS",
    "CASES",
    "Act",
    "Case",
    "DriverSession",
    "ImageCache",
    "Result",
    "available",
    "cases",
    "compare",
    "declares_rename_dir_exdev",
    "prebuild",
    "reference_apply",
    "run_case",
    "run_driver",
    "run_suite",
    "scan",
]
