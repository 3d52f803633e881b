"""URLs of the taskpool app (views are being written)."""

urlpatterns: list = []
