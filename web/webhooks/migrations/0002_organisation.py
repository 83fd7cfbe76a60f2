import django.db.models.deletion
from django.db import migrations, models

from core.organisations.moving import into_default

# The rows made before organisations move into the default one (docs/decisions/0025-organisations.md); the
# next migration makes the column required, in a transaction of its own (PostgreSQL refuses to alter a table
# with the pending checks of this one's deferred foreign key).


class Migration(migrations.Migration):

    dependencies = [
        ('organisations', '0001_initial'),
        ('webhooks', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='webhookendpoint',
            name='organisation',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='webhook_endpoints', to='organisations.organisation'),
        ),
        migrations.RunPython(into_default('webhooks.WebhookEndpoint'), migrations.RunPython.noop),
    ]
