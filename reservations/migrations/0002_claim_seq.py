from django.db import migrations

# The car's claim sequence (core.locking.CLAIM_SEQ, docs/decisions/0022-one-statement-holds.md): a
# column outside the model, so that a save() of a car read earlier never writes it back stale.


class Migration(migrations.Migration):
    dependencies = [("reservations", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE reservations_car ADD COLUMN claim_seq bigint NOT NULL DEFAULT 0",
            "ALTER TABLE reservations_car DROP COLUMN claim_seq",
        )
    ]
