from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("reports.urls")),
    path("admin/", admin.site.urls),
    path("taskpool/", include("django_integration.urls")),  # health/ and tasks/<id>/
    *static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT),  # the rendered reports (DEBUG only)
]
