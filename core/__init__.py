"""The claim core: claims, the engine, row locks, expiry, reminders, invariants, audit, errors."""
