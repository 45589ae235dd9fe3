"""Conformance: does a driver's container root behave like a plain directory? (The suite is in
runner; this package's modules are its parts.)"""

from cowlab.measure.conformance.runner import (
    CAP_RENAME_DIR_EXDEV, CAP_XATTRS, CASES, Act, Case, DriverSession, ImageCache, Result, available,
    cases, compare, declares_rename_dir_exdev, prebuild, reference_apply, run_case, run_driver,
    run_suite, scan,
)

__all__ = ["CAP_RENAME_DIR_EXDEV", "CAP_XATTRS", "CASES", "Act", "Case", "DriverSession", "ImageCache",
           "Result", "available", "cases", "compare", "declares_rename_dir_exdev", "prebuild",
           "reference_apply", "run_case", "run_driver", "run_suite", "scan"]
