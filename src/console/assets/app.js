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
    // Several turns: the earlier ones go with each message; the transcript shows them.
    var history = [];
    var transcript = document.getElementById("pg_transcript");
    var errBox = document.getElementById("pg_error");
    var pending = "";
    function turn(role, text) {
      var li = document.createElement("li"); li.className = "turn " + role;
      var who = document.createElement("strong"); who.textContent = role === "user" ? "You" : "Assistant";
      var p = document.createElement("div"); p.textContent = text;
      li.appendChild(who); li.appendChild(p); transcript.appendChild(li);
    }
    // An error answer, readably: status, Wharf's code and its message.
    function showError(status, raw) {
      var msg = raw;
      try {
        var j = JSON.parse(raw); var e = j.error || j;
        msg = (e.code || e.type || "error") + ": " + (e.message || JSON.stringify(e));
      } catch (x) { /* not JSON */ }
      errBox.textContent = "The gateway answered " + status + " — " + msg; errBox.hidden = false;
    }
    function usd(n) { var v = n / 1e9; return n === 0 ? "$0" : (Math.abs(v) >= 1 ? "$" + v.toFixed(2) : "$" + v.toFixed(6)); }
    document.getElementById("pg_reset").addEventListener("click", function () {
      history = []; transcript.textContent = ""; out.textContent = ""; errBox.hidden = true; usage.textContent = "—";
    });
    pg.addEventListener("submit", function (ev) {
      ev.preventDefault();
      out.textContent = ""; errBox.hidden = true; usage.textContent = "waiting for the usage record…";
      pending = pg.elements.prompt.value;
      var body = new URLSearchParams();
      body.set("_csrf", csrf);
      body.set("key", pg.elements.key.value);
      body.set("model", pg.elements.model.value);
      body.set("system", pg.elements.system.value);
      body.set("temperature", pg.elements.temperature.value);
      body.set("max_tokens", pg.elements.max_tokens.value);
      body.set("history", JSON.stringify(history));
      body.set("prompt", pending);
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
                try {
                  var j = JSON.parse(d);
                  if (j.error) { showError(r.status, d); return; }
                  var t = j.choices && j.choices[0] && j.choices[0].delta && j.choices[0].delta.content; if (t) out.textContent += t;
                } catch (e) { }
              });
            });
            return pump();
          });
        }
        return pump();
      }).catch(function (e) { out.textContent = "error: " + e; });
    });
    function finish(r, rid, raw) {
      if (r.status !== 200) {
        showError(r.status, raw);
      } else if (!pg.elements.stream.checked) {
        try { var j = JSON.parse(raw); out.textContent = (j.choices && j.choices[0] && j.choices[0].message && j.choices[0].message.content) || JSON.stringify(j, null, 2); } catch (e) { out.textContent = raw; }
      }
      if (r.status === 200 && out.textContent) {
        history.push({ role: "user", content: pending }, { role: "assistant", content: out.textContent });
        turn("user", pending); turn("assistant", out.textContent);
        pg.elements.history.value = JSON.stringify(history);
        pg.elements.prompt.value = "";
      }
      if (!rid) { usage.textContent = "—"; return; }
      var tries = 0;
      (function poll() {
        fetch(usageUrl + "?request_id=" + encodeURIComponent(rid), { credentials: "same-origin" }).then(function (u) { return u.json(); }).then(function (rec) {
          if (rec && rec.request_id) {
            usage.textContent = "request " + rec.request_id + "\nmodel " + rec.model + " · " + rec.input_tokens + " in / " + rec.output_tokens + " out tokens\ncost " + usd(rec.cost_nanos) + " · " + rec.latency_ms + " ms · " + rec.outcome;
          } else if (++tries < 20) { setTimeout(poll, 500); } else { usage.textContent = "no usage record yet"; }
        });
      })();
    }
  }
})();
