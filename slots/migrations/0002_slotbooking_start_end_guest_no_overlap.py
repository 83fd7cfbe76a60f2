"""A booking keeps its time on its own row, and a guest's held or confirmed bookings never overlap
(``slotbooking_guest_no_overlap``, docs/decisions/0014-appointments.md).

Existing data is never resolved silently: when some guest already has two overlapping bookings that the
constraint would refuse, the migration stops before adding it and names them."""

import django.contrib.postgres.constraints
from django.db import migrations, models

import slots.models

# The constraint's own predicate, over every pair of one guest's rows it covers.
CLASHES = """
WITH alive AS (
    SELECT id, guest_id, tstzrange(start, "end", '[)') AS span,
           tstzrange(LEAST(created_at, expires_at), CASE WHEN status = 'CONFIRMED' THEN NULL ELSE expires_at END,
                     '[)') AS alive
    FROM slots_slotbooking WHERE status IN ('PENDING', 'CONFIRMED'))
SELECT a.guest_id, a.id, b.id FROM alive a JOIN alive b ON a.guest_id = b.guest_id AND a.id < b.id
WHERE a.span && b.span AND a.alive && b.alive
ORDER BY a.guest_id, a.id, b.id
"""


def refuse_overlapping_bookings(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(CLASHES)
        clashes = cursor.fetchall()
    if clashes:
        listed = "; ".join(f"guest {guest}: bookings #{a} and #{b}" for guest, a, b in clashes[:20])
        more = f" (and {len(clashes) - 20} more pairs)" if len(clashes) > 20 else ""
        raise RuntimeError(
            f"{len(clashes)} pair(s) of held or confirmed slot bookings of one guest overlap in time: {listed}{more}. "
            "Run `manage.py expire_holds` (an overdue hold still counts here until it is expired), cancel one "
            "booking of each remaining pair, then migrate again."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("slots", "0001_initial"),
    ]

    operations = [
        migrations.AddField(model_name="slotbooking", name="start", field=models.DateTimeField(null=True)),
        migrations.AddField(model_name="slotbooking", name="end", field=models.DateTimeField(null=True)),
        migrations.RunSQL(
            'UPDATE slots_slotbooking b SET start = s.start, "end" = s."end" FROM slots_slot s WHERE s.id = b.slot_id',
            reverse_sql=migrations.RunSQL.noop,
        ),
        migrations.AlterField(model_name="slotbooking", name="start", field=models.DateTimeField()),
        migrations.AlterField(model_name="slotbooking", name="end", field=models.DateTimeField()),
        migrations.AddConstraint(
            model_name="slotbooking",
            constraint=models.CheckConstraint(
                condition=models.Q(("end__gt", models.F("start"))), name="slotbooking_ends_after_start"
            ),
        ),
        migrations.RunPython(refuse_overlapping_bookings, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="slotbooking",
            constraint=django.contrib.postgres.constraints.ExclusionConstraint(
                condition=models.Q(("status__in", ["PENDING", "CONFIRMED"])),
                expressions=[
                    (slots.models.Int8Range(models.F("guest_id"), models.F("guest_id"), models.Value("[]")), "&&"),
                    (slots.models.TsTzRange(models.F("start"), models.F("end"), models.Value("[)")), "&&"),
                    (slots.models.Alive(), "&&"),
                ],
                name="slotbooking_guest_no_overlap",
            ),
        ),
    ]
