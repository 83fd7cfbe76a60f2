"""The demo data set (``manage.py seed_demo``, loaded by `make run`): the logins it prints, loaded once."""

import re

import pytest
from django.conf import settings
from django.core.management import call_command


@pytest.mark.django_db
def test_seed_demo_loads_once(capsys):
    call_command("seed_demo")
    first = capsys.readouterr().out
    call_command("seed_demo")

    assert capsys.readouterr().out == first
    assert "operator / operator" in first


@pytest.mark.django_db
def test_the_demo_data_prints_three_tokens_and_gives_the_demo_host_a_week(capsys, client, staff):
    call_command("seed_demo")
    out = capsys.readouterr().out

    assert len(re.findall(r"API token of .*: [0-9a-f]{40}$", out, re.MULTILINE)) == 3
    assert "`make run` prints the operator login, three API tokens" in (settings.BASE_DIR / "README.md").read_text()
    week = re.search(r"The demo host's week: (\S+)", out)
    assert week is not None
    client.force_login(staff)
    page = client.get(week.group(1)).content.decode()
    assert "hours 09:00 to 12:30" in page and "hours 13:30 to 17:00" in page
    assert page.count('class="block slot"') == 6
