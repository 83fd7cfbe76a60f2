"""A TypeScript client made from the running server's schema works (docs/decisions/0018-schema-for-clients.md):
openapi-typescript writes its types, tsc checks tests/clients/flow.ts against them, and node runs it against
``manage.py serve``. The npm packages are those of tests/clients/package-lock.json, installed here by
``npm ci`` (node_modules is never committed); without node and npm the test is skipped, saying so."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer

from tests.events.factories import make_event
from tests.reservations.factories import CarFactory
from tests.slots.factories import SlotFactory

HERE = Path(__file__).parent
NODE_MODULES = HERE / "node_modules"
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "target": "es2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "lib": ["es2022", "dom"],  # dom: fetch, Request and Response, which openapi-fetch's types name
        "outDir": "out",
        "noEmitOnError": True,
        "skipLibCheck": True,
    },
    "files": ["flow.ts"],
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are not installed"),
]


def run(*command: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def npm_packages() -> Path:
    """tests/clients/node_modules as package-lock.json pins it, installed again when the lock is newer."""
    installed = NODE_MODULES / ".package-lock.json"  # npm writes it last
    if not installed.exists() or installed.stat().st_mtime < (HERE / "package-lock.json").stat().st_mtime:
        result = run("npm", "ci", "--no-audit", "--no-fund", cwd=HERE)
        assert result.returncode == 0, result.stdout + result.stderr
    return NODE_MODULES


def project(folder: Path, schema: str, npm_packages: Path) -> Path:
    """``folder`` with the types openapi-typescript generates from ``schema`` (a URL or a file), the flow
    and its settings."""
    (folder / "node_modules").symlink_to(npm_packages)
    generated = run(
        str(npm_packages / ".bin" / "openapi-typescript"),
        schema,
        "--output",
        "api.ts",
        # A default makes a property required in every type by default: a request would have to send
        # what the server fills in when it is left out (a booking's seats and hold).
        "--default-non-nullable",
        "false",
        cwd=folder,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    shutil.copy(HERE / "flow.ts", folder)
    (folder / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    (folder / "package.json").write_text('{"type": "module"}')
    return folder


def write_config(folder: Path, base_url: str, **ids: int) -> None:
    lines = [f"export const baseUrl = {json.dumps(base_url)};", *(f"export const {k} = {v};" for k, v in ids.items())]
    (folder / "config.ts").write_text("\n".join(lines) + "\n")


def test_the_flow_type_checks_and_runs_against_the_server(served, npm_packages, tmp_path):
    folder = project(tmp_path, f"{served}/api/schema/", npm_packages)
    car, event, slot = CarFactory(), make_event(total_seats=10), SlotFactory()
    write_config(folder, served, carId=car.pk, eventId=event.pk, slotId=slot.pk)

    checked = run(str(folder / "node_modules" / ".bin" / "tsc"), "-p", ".", cwd=folder)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ran = run("node", "out/flow.js", cwd=folder, timeout=60)
    assert ran.returncode == 0, ran.stdout + ran.stderr

    seen = json.loads(ran.stdout)
    assert (seen["held"], seen["confirmed"]) == ("HELD", "CONFIRMED")
    assert seen["conflict"]["status"] == 409 and seen["conflict"]["code"] == "car_unavailable"
    assert seen["conflict"]["message"]
    assert (seen["seats"], seen["booked"], seen["booking"]) == (["S1"], True, "CONFIRMED")


def test_tsc_refuses_a_flow_that_does_not_fit_the_schema(npm_packages, tmp_path):
    """The control: the types bind. The car's id sent as text is refused. (The schema view's output,
    as a file: no server needed to type-check.)"""
    schema = tmp_path / "schema.json"
    schema.write_bytes(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(public=True)))
    (tmp_path / "client").mkdir()
    folder = project(tmp_path / "client", str(schema), npm_packages)
    write_config(folder, "http://127.0.0.1:1", carId=1, eventId=1, slotId=1)
    flow = folder / "flow.ts"
    flow.write_text(flow.read_text().replace("body: { carId }", "body: { carId: String(carId) }"))

    checked = run(str(folder / "node_modules" / ".bin" / "tsc"), "-p", ".", cwd=folder)

    assert checked.returncode != 0
    assert "error TS2322: Type 'string' is not assignable to type 'number'" in checked.stdout, checked.stdout
