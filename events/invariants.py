"""What must always hold for events, seats and seat claims (core.invariants; the claim-level ones
come from the engine). Every query names hold groups, the rows the admin shows."""

from core.invariants import Invariant, column, one_active_per, table
from events.models import Event, EventQueue, QueueEntry, SeatClaim, SeatHoldGroup, WaitlistEntry

_EVENT, _CLAIM, _GROUP, _ENTRY = table(Event), table(SeatClaim), table(SeatHoldGroup), table(WaitlistEntry)
_QUEUE, _QUEUE_ENTRY = table(EventQueue), table(QueueEntry)
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
        holds="A live hold group has seat_count seat claims in its own state, no seat claim is active "
        "for a group that is not, and a claim in another state than its group's is a seat cancelled on its "
        "own: CANCELLED, of a booking (confirmed or cancelled since).",
        sql=f"""SELECT g.id FROM {_GROUP} g WHERE g.state IN ('HELD', 'CONFIRMED') AND g.seat_count <> (
                    SELECT COUNT(*) FROM {_CLAIM} c WHERE c.group_id = g.id AND c.state = g.state)
                UNION
                SELECT c.group_id FROM {_CLAIM} c JOIN {_GROUP} g ON g.id = c.group_id
                WHERE c.state IN ('HELD', 'CONFIRMED') AND (c.state <> g.state OR c.expires_at <> g.expires_at)
                UNION
                SELECT c.group_id FROM {_CLAIM} c JOIN {_GROUP} g ON g.id = c.group_id
                WHERE c.state <> g.state AND (c.state <> 'CANCELLED' OR g.state NOT IN ('CONFIRMED', 'CANCELLED'))""",
        model=SeatHoldGroup,
    ),
    Invariant(
        name="events.waiting_counted",
        holds="Each event's waiting_count equals its WAITING waiting-list entries.",
        # Per event, a range of waitlist_entry_waiting_idx (event, id; WAITING entries only).
        sql=f"""SELECT e.id FROM {_EVENT} e WHERE e.waiting_count <> (
                    SELECT COUNT(*) FROM {_ENTRY} w WHERE w.event_id = e.id AND w.state = 'WAITING')""",
        model=Event,
    ),
    Invariant(
        name="events.offer_follows_its_hold",
        holds="An OFFERED waiting-list entry's hold is HELD, an ACCEPTED one's was confirmed, and an entry's "
        "offer expires when its hold does.",
        sql=f"""SELECT w.id FROM {_ENTRY} w JOIN {_GROUP} g ON g.id = w.hold_group_id
                WHERE (w.state = 'OFFERED' AND g.state <> 'HELD')
                   OR (w.state = 'ACCEPTED' AND g.state NOT IN ('CONFIRMED', 'CANCELLED'))
                   OR w.offer_expires_at <> g.expires_at""",
        model=WaitlistEntry,
    ),
    Invariant(
        name="events.queue_numbers_and_mark",
        holds="Each admission queue's entries are numbered 1 to joined without a gap, and exactly those up to "
        "admitted_through have been admitted (so every position shown is exact).",
        # Per queue, two ranges of queue_entry_number_unique_per_event (event, number).
        # Named by the event: its admin page shows the queue's figures and links its entries.
        sql=f"""SELECT q.event_id AS id FROM {_QUEUE} q
                WHERE q.joined <> (SELECT COUNT(*) FROM {_QUEUE_ENTRY} x WHERE x.event_id = q.event_id)
                   OR EXISTS (SELECT FROM {_QUEUE_ENTRY} x WHERE x.event_id = q.event_id
                              AND x.number <= q.admitted_through AND x.state = 'WAITING')
                   OR EXISTS (SELECT FROM {_QUEUE_ENTRY} x WHERE x.event_id = q.event_id
                              AND x.number > q.admitted_through AND x.state <> 'WAITING')""",
        model=Event,
    ),
]
