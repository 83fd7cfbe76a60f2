from django.urls import path

from events.api import views

urlpatterns = [
    path("events", views.EventList.as_view(), name="event-list"),
    path("events/<id:event_id>", views.EventDetail.as_view(), name="event-detail"),
    path("events/<id:event_id>/seats", views.EventSeats.as_view(), name="event-seats"),
    path("events/<id:event_id>/seats/reserve", views.SeatsReserve.as_view(), name="event-seats-reserve"),
    path("events/<id:event_id>/seats/confirm", views.SeatsConfirm.as_view(), name="event-seats-confirm"),
    path("events/<id:event_id>/queue", views.QueueJoin.as_view(), name="event-queue-join"),
    path("events/<id:event_id>/queue/<str:token>", views.QueueEntryDetail.as_view(), name="event-queue-entry"),
    path("events/<id:event_id>/seats/release", views.SeatsRelease.as_view(), name="event-seats-release"),
    path("events/<id:event_id>/waitlist", views.Waitlist.as_view(), name="event-waitlist"),
    path(
        "events/<id:event_id>/waitlist/<id:entry_id>", views.WaitlistEntryDetail.as_view(), name="event-waitlist-entry"
    ),
    path("events/holds/<uuid:hold_group_id>", views.HoldDetail.as_view(), name="event-hold-detail"),
    path("events/holds/<uuid:hold_group_id>/events", views.HoldEvents.as_view(), name="event-hold-events"),
    path("events/bookings/<uuid:booking_group_id>", views.BookingDetail.as_view(), name="event-booking-detail"),
    path("events/bookings/<uuid:booking_group_id>/cancel", views.BookingCancel.as_view(), name="event-booking-cancel"),
    path(
        "events/bookings/<uuid:booking_group_id>/calendar",
        views.BookingCalendar.as_view(),
        name="event-booking-calendar",
    ),
    path("events/bookings/<uuid:booking_group_id>/events", views.BookingEvents.as_view(), name="event-booking-events"),
]
