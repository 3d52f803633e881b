"""Start a report in the background; watch it on its own page."""

from django import forms
from django.shortcuts import redirect, render

from django_integration.models import TaskRecord

from .tasks import build_report


class ReportForm(forms.Form):
    report_id = forms.IntegerField(label="Report number", min_value=1, initial=1)
    pages = forms.IntegerField(label="Pages", min_value=1, max_value=100, initial=10)


def index(request):
    form = ReportForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # The row is written in this request's transaction; the supervisor hears of it on commit.
        handle = build_report.submit(form.cleaned_data["report_id"], pages=form.cleaned_data["pages"])
        return redirect("report", task_id=handle.id)
    recent = TaskRecord.objects.filter(name=build_report.name)[:10]
    return render(request, "reports/index.html", {"form": form, "recent": recent})


def report(request, task_id):
    return render(request, "reports/report.html", {"task_id": task_id})
