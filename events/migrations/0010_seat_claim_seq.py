from django.db import migrations

# The seat's claim sequence (core.locking.CLAIM_SEQ, docs/decisions/0022-one-statement-holds.md): a
# column outside the model, so that a save() of a seat read earlier never writes it back stale.


class Migration(migrations.Migration):
    dependencies = [("events", "0009_organisation_required")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE events_seat ADD COLUMN claim_seq bigint NOT NULL DEFAULT 0",
            "ALTER TABLE events_seat DROP COLUMN claim_seq",
        )
    ]
