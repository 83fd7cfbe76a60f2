from django.urls import path

from slots.api import views

urlpatterns = [
    path("slots", views.SlotList.as_view(), name="slot-list"),
    path("slots/host", views.HostSlotList.as_view(), name="slot-host-list"),
    path("slots/<id:slot_id>", views.SlotDetail.as_view(), name="slot-detail"),
    path("bookings", views.BookingList.as_view(), name="booking-list"),
    path("bookings/<id:booking_id>", views.BookingDetail.as_view(), name="booking-detail"),
    path("bookings/<id:booking_id>/confirm", views.BookingConfirm.as_view(), name="booking-confirm"),
    path("bookings/<id:booking_id>/cancel", views.BookingCancel.as_view(), name="booking-cancel"),
    path("bookings/<id:booking_id>/reschedule", views.BookingReschedule.as_view(), name="booking-reschedule"),
    path("bookings/<id:booking_id>/events", views.BookingEvents.as_view(), name="booking-events"),
    path("bookings/<id:booking_id>/calendar", views.BookingCalendar.as_view(), name="booking-calendar"),
    path("hosts/me/availability", views.MyAvailability.as_view(), name="availability-mine"),
    path("hosts/<id:host_id>/availability", views.HostAvailability.as_view(), name="availability-host"),
    path("users/<id:user_id>/slots", views.HostFreeTimes.as_view(), name="host-free-times"),
    path("admin/analytics", views.AdminAnalytics.as_view(), name="admin-analytics"),
    path("admin/expire-pending", views.AdminExpirePending.as_view(), name="admin-expire-pending"),
]
