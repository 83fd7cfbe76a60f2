"""The idempotency key a claim was asked with is ``idempotency_key`` (was ``request_id``, which in the audit
trail is the trace id): a rename of the column, no data moves."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("slots", "0006_slotbooking_reminded_at"),
    ]

    operations = [
        migrations.RenameField(model_name="slotbooking", old_name="request_id", new_name="idempotency_key"),
    ]
