/* taskpool progress widget: polls each [data-taskpool-task] element's status URL until the task is final.
   Plain JavaScript, no build step. Loaded once per widget; runs once per page. */
(function () {
  "use strict";
  if (window.taskpoolProgress) { window.taskpoolProgress.scan(); return; }

  var LABELS = {READY: "Waiting to start", RUNNING: "Running", SUCCESSFUL: "Finished",
                FAILED: "Failed", CANCELLED: "Cancelled"};
  var MAX_DELAY = 30000;

  function show(node, text) { node.textContent = text; node.hidden = false; }

  function start(el) {
    if (el.getAttribute("data-taskpool-started")) { return; }
    el.setAttribute("data-taskpool-started", "1");
    var url = el.getAttribute("data-status-url");
    var interval = Math.max(250, parseInt(el.getAttribute("data-interval"), 10) || 1000);
    var bar = el.querySelector(".taskpool-progress-bar");
    var percent = el.querySelector(".taskpool-progress-percent");
    var status = el.querySelector(".taskpool-progress-status");
    var outcome = el.querySelector(".taskpool-progress-outcome");
    var result = el.querySelector(".taskpool-progress-result");
    var error = el.querySelector(".taskpool-progress-error");
    var failures = 0;

    function render(data) {
      var value = data.status === "SUCCESSFUL" ? 100 : data.progress;
      if (value === null || value === undefined) {
        bar.removeAttribute("value");  /* indeterminate until the task reports progress */
        percent.textContent = "";
      } else {
        value = Math.max(0, Math.min(100, value));
        bar.value = value;
        percent.textContent = Math.round(value) + "%";
      }
      el.setAttribute("data-status", data.status);
      var text = LABELS[data.status] || data.status;
      if (value !== null && value !== undefined && !data.final) { text += " \u2014 " + Math.round(value) + "%"; }
      if (data.progress_message && !data.final) { text += ": " + data.progress_message; }
      if (data.attempts > 1) { text += " (attempt " + data.attempts + ")"; }
      status.textContent = text;
      if (data.final) {
        outcome.hidden = false;
        if (data.status === "SUCCESSFUL") {
          show(result, JSON.stringify(data.result, null, 2));
        } else if (data.error) {
          show(error, data.error.type + ": " + data.error.message);
        } else {
          show(error, LABELS[data.status] || data.status);
        }
      }
    }

    function retry(message) {
      failures += 1;
      status.textContent = message + "; retrying\u2026";
      setTimeout(poll, Math.min(MAX_DELAY, interval * Math.pow(2, failures)));
    }

    function poll() {
      fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin", cache: "no-store"})
        .then(function (response) {
          return response.json().then(function (data) { return {code: response.status, data: data}; });
        })
        .then(function (answer) {
          if (answer.code === 404 || answer.code === 403) {
            el.setAttribute("data-status", "UNKNOWN");
            status.textContent = answer.data.error || "Unknown task";
            return;  /* asking again will not help */
          }
          if (answer.code !== 200) { retry(answer.data.error || "Task state unavailable"); return; }
          failures = 0;
          render(answer.data);
          if (answer.data.final) {
            el.dispatchEvent(new CustomEvent("taskpool:final", {bubbles: true, detail: answer.data}));
          } else {
            setTimeout(poll, interval);
          }
        })
        .catch(function () { retry("Cannot reach the server"); });
    }

    poll();
  }

  function scan() {
    var widgets = document.querySelectorAll("[data-taskpool-task]");
    for (var i = 0; i < widgets.length; i++) { start(widgets[i]); }
  }

  window.taskpoolProgress = {scan: scan};
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", scan);
  } else {
    scan();
  }
})();
