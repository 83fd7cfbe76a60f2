"""What must always hold for events, seats and seat claims (booking_site.invariants; the claim-level ones
come from the engine). Every query names hold groups, the rows the admin shows."""

from booking_site.invariants import Invariant, column, one_active_per, table
from events.models import Event, EventQueue, QueueEntry, SeatClaim, SeatHoldGroup

_EVENT, _CLAIM, _GROUP = table(Event), table(SeatClaim), table(SeatHoldGroup)
_QUEUE, _ENTRY = table(EventQueue), table(QueueEntry)
_CONFIRMED = column(Event, "confirmed_seats")

INVARIANTS = [
    one_active_per(
        "events.one_active_claim_per_seat",
        claims=SeatClaim,
        resource="seat",
        blocking=SeatHoldGroup.BLOCKING_STATES,
        link="group_id",
        model=SeatHoldGroup,
    ),
    Invariant(
        name="events.confirmed_seats_counted",
        holds="Each event's confirmed_seats equals its seats in confirmed claims.",
        # Per event, a range of seat_claim_active_idx (event, seat; held or confirmed claims only).
        sql=f"""SELECT e.id FROM {_EVENT} e WHERE e.{_CONFIRMED} <> (
                    SELECT COUNT(*) FROM {_CLAIM} c WHERE c.event_id = e.id AND c.state = 'CONFIRMED')""",
        model=Event,
    ),
    Invariant(
        name="events.seat_claims_mirror_group",
        holds="A live hold group has seat_count seat claims in its own state, and no seat claim is active "
        "for a group that is not.",
        sql=f"""SELECT g.id FROM {_GROUP} g WHERE g.state IN ('HELD', 'CONFIRMED') AND g.seat_count <> (
                    SELECT COUNT(*) FROM {_CLAIM} c WHERE c.group_id = g.id AND c.state = g.state)
                UNION
                SELECT c.group_id FROM {_CLAIM} c JOIN {_GROUP} g ON g.id = c.group_id
                WHERE c.state IN ('HELD', 'CONFIRMED') AND (c.state <> g.state OR c.expires_at <> g.expires_at)""",
        model=SeatHoldGroup,
    ),
    Invariant(
        name="events.queue_numbers_and_mark",
        holds="Each admission queue's entries are numbered 1 to joined without a gap, and exactly those up to "
        "admitted_through have been admitted (so every position shown is exact).",
        # Per queue, two ranges of queue_entry_number_unique_per_event (event, number).
        # Named by the event: its admin page shows the queue's figures and links its entries.
        sql=f"""SELECT q.event_id AS id FROM {_QUEUE} q
                WHERE q.joined <> (SELECT COUNT(*) FROM {_ENTRY} x WHERE x.event_id = q.event_id)
                   OR EXISTS (SELECT FROM {_ENTRY} x WHERE x.event_id = q.event_id AND x.number <= q.admitted_through
                              AND x.state = 'WAITING')
                   OR EXISTS (SELECT FROM {_ENTRY} x WHERE x.event_id = q.event_id AND x.number > q.admitted_through
                              AND x.state <> 'WAITING')""",
        model=Event,
    ),
]
