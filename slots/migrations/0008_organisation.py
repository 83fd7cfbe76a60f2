import django.db.models.deletion
from django.db import migrations, models

from core.organisations.moving import into_default

# The rows made before organisations move into the default one (docs/decisions/0025-organisations.md); the
# next migration makes the column required, in a transaction of its own (PostgreSQL refuses to alter a table
# with the pending checks of this one's deferred foreign key).


class Migration(migrations.Migration):

    dependencies = [
        ('organisations', '0001_initial'),
        ('slots', '0007_idempotency_key'),
    ]

    operations = [
        migrations.AddField(
            model_name='availability',
            name='organisation',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='organisations.organisation'),
        ),
        migrations.AddField(
            model_name='slot',
            name='organisation',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='organisations.organisation'),
        ),
        migrations.RunPython(into_default('slots.Availability'), migrations.RunPython.noop),
        migrations.RunPython(into_default('slots.Slot'), migrations.RunPython.noop),
    ]
