// A buyer's day through a TypeScript client made from the schema (tests/clients/test_typescript_client.py):
// openapi-typescript's types for the paths, openapi-fetch's calls. tsc checks it against the types; node
// runs it against the server and prints what it saw, as JSON.
import createClient from "openapi-fetch";

import type { components, paths } from "./api.js";
import { baseUrl, carId, eventId, slotId } from "./config.js";

type ApiError = components["schemas"]["Error"];

function ok<T>(result: { data?: T; error?: unknown }): T {
  if (result.data === undefined) {
    throw new Error(`refused: ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

async function register(email: string): Promise<string> {
  const anonymous = createClient<paths>({ baseUrl });
  const user = ok(await anonymous.POST("/api/users", { body: { email, name: email, roles: ["GUEST", "HOST"] } }));
  return user.token;
}

function signedIn(token: string) {
  return createClient<paths>({ baseUrl, headers: { Authorization: `Token ${token}` } });
}

const buyer = signedIn(await register("ada@example.com"));
const rival = signedIn(await register("bob@example.com"));

const held = ok(
  await buyer.POST("/api/reservations", { body: { carId }, params: { header: { "Idempotency-Key": "ada-car" } } }),
);
const confirmed = ok(
  await buyer.POST("/api/reservations/{reservation_id}/confirm", { params: { path: { reservation_id: held.id } } }),
);

const refused = await rival.POST("/api/reservations", { body: { carId } });
const conflict: ApiError | undefined = refused.error;

const seats = ok(
  await buyer.POST("/api/events/{event_id}/seats/reserve", {
    params: { path: { event_id: eventId } },
    body: { seatCodes: ["S1"] },
  }),
);
const booked = ok(
  await buyer.POST("/api/events/{event_id}/seats/confirm", {
    params: { path: { event_id: eventId } },
    body: { holdGroupId: seats.holdGroupId },
  }),
);
const booking = ok(await buyer.POST("/api/bookings", { body: { slotId } }));

console.log(
  JSON.stringify({
    held: held.state,
    confirmed: confirmed.state,
    conflict: { status: refused.response.status, code: conflict?.error.code, message: conflict?.error.message },
    seats: seats.seatCodes,
    booked: booked.success,
    booking: booking.status,
  }),
);
