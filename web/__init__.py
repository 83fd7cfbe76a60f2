"""The web platform the domains build on: accounts, the API's bases, idempotency, throttling,
schema, parsers and renderers, calendars, exports, webhooks."""
