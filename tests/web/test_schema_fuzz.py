"""The OpenAPI schema tells the truth (docs/decisions/0011-schema-refusals.md): schemathesis, with every
one of its default checks, against the production server, as an operator and as an ordinary user, over
every operation, finds nothing.

The run is bounded and repeatable: a fixed seed, a few examples per operation (SCHEMATHESIS_MAX_EXAMPLES, 3).
`make test` runs schemathesis's examples, fuzzing and stateful phases; the long run (`make test-long`) adds
the coverage phase, every boundary and wrong value of every parameter: ~5,400 requests, a minute and a half
of each caller's run. A longer one:
``SCHEMATHESIS_MAX_EXAMPLES=100 .venv/bin/pytest -m long tests/web/test_schema_fuzz.py`` (CONTRIBUTING.md).
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator

from tests.lengths import short_and_long
from web.accounts.models import User

CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")  # each error's code is one its operation lists
MAX_EXAMPLES = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "3")
SEED = os.environ.get("SCHEMATHESIS_SEED", "1")


def schemathesis(base_url: str, token: str, phases: str, log: Path) -> tuple[int, str]:
    """Run schemathesis against the server at ``base_url``; its exit status and its report."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{base_url}/api/schema/",
        "--header",
        f"Authorization: Token {token}",
        "--phases",
        phases,
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        SEED,
        "--generation-database",
        "none",  # nothing carried over from an earlier run: the same cases every time
        "--workers",
        "1",  # one request at a time: no lock waits, so no 503 busy
        "--request-timeout",
        "20",
    ]
    with log.open("w") as out:
        # In the log's directory: its cache (.schemathesis/) stays out of the checkout.
        status = subprocess.run(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
            timeout=600,
        ).returncode
    return status, log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("caller", ["operator", "buyer"])
@short_and_long("phases", "examples,fuzzing,stateful", "examples,coverage,fuzzing,stateful")
def test_schemathesis_finds_nothing(served, caller, phases, tmp_path):
    call_command("seed_demo", stdout=io.StringIO())  # cars, an event, slots: ids that exist
    user = User.objects.get(is_staff=True) if caller == "operator" else User.objects.get(username="buyer@example.com")

    operations = sum(len(methods) for methods in SchemaGenerator().get_schema(public=True)["paths"].values())

    status, report = schemathesis(served, user.auth_token.key, phases, tmp_path / "schemathesis.txt")

    assert f"Tested: {operations}" in report, report[-3000:]  # every operation
    assert status == 0, report[-20000:]
