"""An appointment keeps the host's buffer free on both sides, backstopped by PostgreSQL
(``slot_no_overlap_per_host`` with the buffer after, ``slot_buffer_before_per_host`` with the buffer before;
docs/decisions/0014-appointments.md).

An appointment's slot used to run from its start to its end plus the buffer. It now keeps the appointment's
own time (its booking's) in ``start`` / ``end`` and the buffer around it in ``blocked_from`` /
``blocked_until``; an existing appointment gets the buffer it was booked with (its slot's end minus its
booking's) on both sides.

Existing data is never resolved silently (as ``slots.0002``): when some host already has two AVAILABLE slots
that the constraints would refuse (a published slot inside the buffer before an appointment), the migration
stops before adding them and names them."""

import django.contrib.postgres.constraints
import django.db.models.functions.comparison
from django.db import migrations, models

import slots.models

# Every appointment's slot: its booking's time, the buffer it was booked with before and after it.
SPLIT = """
UPDATE slots_slot s SET blocked_from = s.start - (s."end" - b."end"), blocked_until = s."end", "end" = b."end"
FROM slots_slotbooking b WHERE b.slot_id = s.id AND s.kind = 'APPOINTMENT'
"""
JOIN = """UPDATE slots_slot SET "end" = blocked_until WHERE kind = 'APPOINTMENT'"""

# The constraints' own predicates, over every pair of one host's AVAILABLE slots.
CLASHES = """
WITH taken AS (
    SELECT id, host_id, tstzrange(start, coalesce(blocked_until, "end"), '[)') AS after,
           tstzrange(coalesce(blocked_from, start), "end", '[)') AS before
    FROM slots_slot WHERE status = 'AVAILABLE')
SELECT a.host_id, a.id, b.id FROM taken a JOIN taken b ON a.host_id = b.host_id AND a.id < b.id
WHERE a.after && b.after OR a.before && b.before
ORDER BY a.host_id, a.id, b.id
"""


def refuse_slots_in_a_buffer(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(CLASHES)
        clashes = cursor.fetchall()
    if clashes:
        listed = "; ".join(f"host {host}: slots #{a} and #{b}" for host, a, b in clashes[:20])
        more = f" (and {len(clashes) - 20} more pairs)" if len(clashes) > 20 else ""
        raise RuntimeError(
            f"{len(clashes)} pair(s) of available slots of one host overlap, counting each appointment's buffer on "
            f"both sides: {listed}{more}. Run `manage.py expire_holds` (an overdue hold's appointment still counts "
            "here until it is expired), then withdraw the published slot or cancel the appointment's booking of "
            "each remaining pair, then migrate again."
        )


class Migration(migrations.Migration):
    dependencies = [
        ("slots", "0004_slot_kind"),
    ]

    operations = [
        migrations.AddField(model_name="slot", name="blocked_from", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(model_name="slot", name="blocked_until", field=models.DateTimeField(blank=True, null=True)),
        migrations.RemoveConstraint(model_name="slot", name="slot_no_overlap_per_host"),
        migrations.RunSQL(SPLIT, reverse_sql=JOIN),
        migrations.AddConstraint(
            model_name="slot",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("blocked_from__isnull", True), ("blocked_until__isnull", True), ("kind", "PUBLISHED")),
                    models.Q(
                        ("blocked_from__isnull", False),
                        ("blocked_from__lte", models.F("start")),
                        ("blocked_until__gte", models.F("end")),
                        ("blocked_until__isnull", False),
                        ("kind", "APPOINTMENT"),
                    ),
                    _connector="OR",
                ),
                name="slot_blocked_around_appointment",
            ),
        ),
        migrations.RunPython(refuse_slots_in_a_buffer, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="slot",
            constraint=django.contrib.postgres.constraints.ExclusionConstraint(
                condition=models.Q(("status", "AVAILABLE")),
                expressions=[
                    (slots.models.Int8Range(models.F("host_id"), models.F("host_id"), models.Value("[]")), "&&"),
                    (
                        slots.models.TsTzRange(
                            models.F("start"),
                            django.db.models.functions.comparison.Coalesce(
                                models.F("blocked_until"), models.F("end")
                            ),
                            models.Value("[)"),
                        ),
                        "&&",
                    ),
                ],
                name="slot_no_overlap_per_host",
            ),
        ),
        migrations.AddConstraint(
            model_name="slot",
            constraint=django.contrib.postgres.constraints.ExclusionConstraint(
                condition=models.Q(("status", "AVAILABLE")),
                expressions=[
                    (slots.models.Int8Range(models.F("host_id"), models.F("host_id"), models.Value("[]")), "&&"),
                    (
                        slots.models.TsTzRange(
                            django.db.models.functions.comparison.Coalesce(models.F("blocked_from"), models.F("start")),
                            models.F("end"),
                            models.Value("[)"),
                        ),
                        "&&",
                    ),
                ],
                name="slot_buffer_before_per_host",
            ),
        ),
    ]
