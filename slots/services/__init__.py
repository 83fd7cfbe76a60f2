"""Every write to slots and slot bookings (docs/contract.md §6).

The booking lifecycle is ``core.engine``'s and the locks are ``core.locking``'s (the
order is written there: the guest's or host's user row, then slot rows, then booking rows). This
module declares what is the slots' own: a booking locks its guest (the rules that count a guest's
bookings: at most ``SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST``, one per host) and its slot (the seats of
the slot: its ``booked`` counter, moved by one ``UPDATE`` under that lock); the slot's host may cancel
its bookings; a guest's cancellation window; a reschedule; and the slots' errors.

The write path is lean: a booking is one statement in autocommit (``bookings.SlotBookings``,
docs/decisions/0022-one-statement-holds.md), and so are a confirm, a cancel and an expiry
(``lifecycle.SlotBookingLifecycle``, ADR 0023); an appointment and a reschedule are transactions
(``appointments``, ``reschedule``). A transition finds the booking's guest and slot through the booking's
row in its statement; a reschedule reads them first without a lock (``_peek``). Both are safe because a
booking never changes its guest or its slot. Every write that raises what a booking reads of its guest
moves the guest's claim sequence (``lifecycle.guest_moved``).

PostgreSQL backstops, so that a bug here cannot corrupt data: ``slot_booked_within_capacity``
(check constraint on the counter), ``slot_no_overlap_per_host`` and ``slot_buffer_before_per_host``
(exclusion constraints: a host's time, an appointment's buffer after and before it), and
``slotbooking_guest_no_overlap`` (a guest's time). When a
backstop fires, the request gets the same 409 as the lock-and-check would have given, and
``CONSTRAINT_BACKSTOPS`` counts it.
"""
