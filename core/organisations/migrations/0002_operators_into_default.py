from django.db import migrations

from core.organisations.moving import operators_into_default


class Migration(migrations.Migration):
    dependencies = [("organisations", "0001_initial"), ("accounts", "0003_claim_seq")]

    operations = [migrations.RunPython(operators_into_default, migrations.RunPython.noop)]
