// The dashboard's only script (no inline script: the Content-Security-Policy forbids it). Without it the
// pages still work: forms post and come back, and a reload shows what changed. With it:
// - the page's content is fetched again every few seconds (body data-refresh) and swapped in place,
//   keeping open outputs open, and never while a field is being edited or the tab is hidden;
// - an action (run now, pause, resume) is posted in the background, its answer shown at the top, and the
//   content fetched again at once and twice in the next seconds, so that the run or the pause shows.
(function () {
  "use strict";

  var live = document.getElementById("live");
  var notice = document.getElementById("notice");
  if (!live || !notice) {
    return;
  }
  var every = Number(document.body.getAttribute("data-refresh") || "0") * 1000;
  var busy = false;

  function editing() {
    var el = document.activeElement;
    return !!el && live.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function openRuns() {
    var ids = [];
    live.querySelectorAll("details[open][data-run]").forEach(function (d) {
      ids.push(d.getAttribute("data-run"));
    });
    return ids;
  }

  function refresh() {
    if (busy || document.hidden || editing()) {
      return Promise.resolve();
    }
    busy = true;
    var open = openRuns();
    return fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        return response.ok ? response.text() : Promise.reject(response.status);
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (!fresh || editing()) {
          return;
        }
        live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
        live.querySelectorAll("details[data-run]").forEach(function (d) {
          if (open.indexOf(d.getAttribute("data-run")) >= 0) {
            d.open = true;
          }
        });
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {
        // The next turn tries again; the page keeps what it shows.
      })
      .then(function () {
        busy = false;
      });
  }

  function say(ok, text) {
    var p = document.createElement("p");
    p.className = "banner " + (ok ? "ok" : "bad");
    p.textContent = text;
    notice.replaceChildren(p);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") {
      return;
    }
    event.preventDefault();
    var meta = document.querySelector('meta[name="csrf-token"]');
    var button = form.querySelector("button");
    if (button) {
      button.disabled = true;
    }
    fetch(form.getAttribute("action"), {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": meta ? meta.getAttribute("content") : "" },
    })
      .then(function (response) {
        return response.json().then(function (body) {
          say(response.ok, response.ok ? body.message : body.error);
        });
      })
      .catch(function () {
        say(false, "The dashboard did not answer.");
      })
      .then(function () {
        if (button) {
          button.disabled = false;
        }
        form.reset();
        if (document.activeElement instanceof HTMLElement) {
          document.activeElement.blur();
        }
        // A clock acts on a request at its next poll, about a second: look again soon, not only in a while.
        setTimeout(refresh, 1500);
        setTimeout(refresh, 3500);
        return refresh();
      });
  });

  if (every > 0) {
    setInterval(refresh, every);
  }
})();
