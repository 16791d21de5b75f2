// Wharf admin console: progressive enhancement only. Every page works without this script;
// it adds copy buttons, confirmations, printing, the live gateway status and the playground.
"use strict";
(function () {
  function copy(button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    var text = target.value !== undefined && target.tagName === "INPUT" ? target.value : target.textContent;
    var done = function () { var old = button.textContent; button.textContent = "Copied"; setTimeout(function () { button.textContent = old; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { select(target); });
    } else {
      select(target);
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for manual copy */ }
    }
  }
  function select(el) {
    if (el.select) { el.select(); return; }
    var r = document.createRange(); r.selectNodeContents(el);
    var s = window.getSelection(); s.removeAllRanges(); s.addRange(r);
  }
  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("[data-copy]");
    if (b) { ev.preventDefault(); copy(b); return; }
    if (ev.target.closest("[data-print]")) { window.print(); }
  });
  // A picker that reloads its page (the API docs' model): submit on change.
  document.addEventListener("change", function (ev) {
    if (ev.target.matches("select[data-autosubmit]") && ev.target.form) ev.target.form.submit();
  });
  document.addEventListener("submit", function (ev) {
    var f = ev.target;
    var q = f.getAttribute("data-confirm");
    if (q && !window.confirm(q)) ev.preventDefault();
  });

  // Live gateway status (API docs page).
  var st = document.querySelector("[data-status-url]");
  if (st) {
    fetch(st.getAttribute("data-status-url")).then(function (r) { return r.json(); }).then(function (s) {
      // Public status is gateway-wide: it names no provider of any organisation.
      st.textContent = s.status + " · version " + s.version + " · up " + Math.round(s.uptime_seconds / 60) + " min";
    }).catch(function () { st.textContent = "unreachable"; });
  }

  // Playground: the chat goes through the console's relay to the gateway, streamed.
  var pg = document.getElementById("playground");
  if (pg) {
    var out = document.getElementById("pg_out");
    var usage = document.getElementById("pg_usage");
    var csrf = document.querySelector("input[name=_csrf]").value;
    var relay = pg.getAttribute("data-relay");
    var usageUrl = pg.getAttribute("data-usage");
    // Once a key is pasted, offer only the models that key may call.
    pg.elements.key.addEventListener("change", function () {
      var body = new URLSearchParams(); body.set("_csrf", csrf); body.set("key", pg.elements.key.value);
      fetch(pg.getAttribute("data-models"), { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) { return r.json(); }).then(function (v) {
          if (!v || !v.data) { usage.textContent = (v && v.error && (v.error.message || v.error)) || "this key was refused"; return; }
          var sel = pg.elements.model; var keep = sel.value; sel.textContent = "";
          v.data.forEach(function (m) { var o = document.createElement("option"); o.value = m.id; o.textContent = m.id; sel.appendChild(o); });
          if (keep) sel.value = keep;
        }).catch(function () { });
    });
    pg.addEventListener("submit", function (ev) {
      ev.preventDefault();
      out.textContent = ""; usage.textContent = "waiting for the usage record…";
      var body = new URLSearchParams();
      body.set("_csrf", csrf);
      body.set("key", pg.elements.key.value);
      body.set("model", pg.elements.model.value);
      body.set("prompt", pg.elements.prompt.value);
      body.set("stream", pg.elements.stream.checked ? "true" : "false");
      fetch(relay, { method: "POST", body: body, credentials: "same-origin" }).then(function (r) {
        var rid = r.headers.get("x-request-id");
        var reader = r.body.getReader(); var dec = new TextDecoder(); var buf = ""; var raw = "";
        function pump() {
          return reader.read().then(function (c) {
            if (c.done) { finish(r, rid, raw); return; }
            var text = dec.decode(c.value, { stream: true }); raw += text;
            if (!pg.elements.stream.checked || r.status !== 200) return pump();
            buf += text;
            var parts = buf.split("\n\n"); buf = parts.pop();
            parts.forEach(function (ev) {
              ev.split("\n").forEach(function (line) {
                if (line.indexOf("data: ") !== 0) return;
                var d = line.slice(6); if (d === "[DONE]") return;
                try { var j = JSON.parse(d); var t = j.choices && j.choices[0] && j.choices[0].delta && j.choices[0].delta.content; if (t) out.textContent += t; } catch (e) { }
              });
            });
            return pump();
          });
        }
        return pump();
      }).catch(function (e) { out.textContent = "error: " + e; });
    });
    function finish(r, rid, raw) {
      if (!pg.elements.stream.checked || r.status !== 200) {
        try { var j = JSON.parse(raw); out.textContent = (j.choices && j.choices[0] && j.choices[0].message && j.choices[0].message.content) || JSON.stringify(j, null, 2); } catch (e) { out.textContent = raw; }
      }
      if (!rid) { usage.textContent = "—"; return; }
      var tries = 0;
      (function poll() {
        fetch(usageUrl + "?request_id=" + encodeURIComponent(rid), { credentials: "same-origin" }).then(function (u) { return u.json(); }).then(function (rec) {
          if (rec && rec.request_id) {
            usage.textContent = "request " + rec.request_id + "\nmodel " + rec.model + " · " + rec.input_tokens + " in / " + rec.output_tokens + " out tokens\ncost " + (rec.cost_nanos / 1e9).toFixed(9) + " USD · " + rec.latency_ms + " ms · " + rec.outcome;
          } else if (++tries < 20) { setTimeout(poll, 500); } else { usage.textContent = "no usage record yet"; }
        });
      })();
    }
  }
})();
