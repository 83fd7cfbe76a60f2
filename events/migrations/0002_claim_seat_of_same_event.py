from django.db import migrations

# A claim's seat must be a seat of the claim's event: a composite foreign key, which Django cannot
# declare, onto the unique (id, event_id) of the seat (constraint seat_id_event_unique).
ADD = """
ALTER TABLE events_seatclaim
    ADD CONSTRAINT seat_claim_seat_of_same_event
    FOREIGN KEY (seat_id, event_id) REFERENCES events_seat (id, event_id);
"""
DROP = "ALTER TABLE events_seatclaim DROP CONSTRAINT seat_claim_seat_of_same_event;"


class Migration(migrations.Migration):
    dependencies = [("events", "0001_initial")]

    operations = [migrations.RunSQL(ADD, DROP)]
