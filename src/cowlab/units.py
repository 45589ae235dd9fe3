"""Units: the one size parser every input of cowlab goes through (CLI sizes, driver options,
image specs, what zpool prints)."""

from __future__ import annotations

import re

from .errors import CowlabError

_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([KMGTP]?)(I?B?)\s*", re.I)


def parse_size(v: int | str, *, decimal_si: bool = False, fractions: bool = True) -> int:
    """Bytes from an int or a string: 4096, '64K', '64KiB', '512M', '1.5G', '10GiB', '1B'.

    K/M/G/T/P alone or with iB are powers of 1024 (Docker's and zpool's sizes). With a bare B
    ('64KB') they are powers of 1024 too, as Docker reads them, unless decimal_si (image specs,
    where KB is 1000 and KiB 1024). fractions=False refuses '1.5G'. CowlabError if v is no size."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.fullmatch(v) if isinstance(v, str) else None
    if not m or (m.group(3).upper() == "IB" and not m.group(2)) or (not fractions and "." in m.group(1)):
        raise CowlabError(f"not a size: {v!r} (e.g. 4096, 64K, 512MiB, 10G)")
    num, prefix, suffix = m.group(1), m.group(2).upper(), m.group(3).upper()
    base = 1000 if decimal_si and suffix == "B" and prefix else 1024
    mult = base ** _POWER[prefix]
    return int(num) * mult if "." not in num else int(float(num) * mult)
