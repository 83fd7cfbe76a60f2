"""Every write to events, seats and seat claims (docs/contract.md §5).

The hold lifecycle is ``core.engine``'s and the locks are ``core.locking``'s (the
order is written there). This module declares what is the events' own: a hold shares the event row
(so it judges ``sales_open`` after a close has committed) and locks its seats; a seat is free when no
active claim is on it; every seat claim mirrors its group; confirms and cancels move the event's
``confirmed_seats`` counter, last; and the events' errors.
"""
