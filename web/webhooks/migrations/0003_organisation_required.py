import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('organisations', '0001_initial'),
        ('webhooks', '0002_organisation'),
    ]

    operations = [
        migrations.AlterField(
            model_name='webhookendpoint',
            name='organisation',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='webhook_endpoints', to='organisations.organisation'),
        ),
    ]
