from django.db import migrations

# The user's claim sequence (core.locking.CLAIM_SEQ, docs/decisions/0022-one-statement-holds.md): a
# column outside the model, so that a save() of a user read earlier never writes it back stale. Adding a
# column with a constant default is a change of the catalogue only (no rewrite of the table).


class Migration(migrations.Migration):
    dependencies = [("accounts", "0002_calendar_feed")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE accounts_user ADD COLUMN claim_seq bigint NOT NULL DEFAULT 0",
            "ALTER TABLE accounts_user DROP COLUMN claim_seq",
        )
    ]
