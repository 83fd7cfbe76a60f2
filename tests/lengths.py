"""One test at two lengths: a short run in `make test` and the full one in the `long` runs
(`make test-long`, the second step of .ci/run)."""

import pytest


def short_and_long(name: str, short: object, full: object):
    """Parametrize ``name`` with ``short`` (test id ``short``) and ``full`` (id ``long``, marked ``long``
    and ``slow``): every guarantee is checked by `make test`, and at full length by CI."""
    return pytest.mark.parametrize(
        name,
        [pytest.param(short, id="short"), pytest.param(full, id="long", marks=[pytest.mark.long, pytest.mark.slow])],
    )
