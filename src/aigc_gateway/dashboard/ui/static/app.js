/* AIGC Gateway dashboard: plain JavaScript, no framework, no build step.
 * Every change goes through the JSON API with the session's CSRF token (X-CSRF-Token).
 * Strings come from the page's catalog (<script id="i18n">), never from this file. */
(function () {
  "use strict";

  var strings = {};
  try { strings = JSON.parse(document.getElementById("i18n").textContent || "{}"); } catch (e) { strings = {}; }

  function tr(key, values) {
    var text = strings[key] || key;
    Object.keys(values || {}).forEach(function (name) {
      text = text.split("{" + name + "}").join(String(values[name]));
    });
    return text;
  }

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function all(selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); }

  function newRequestId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  /* One API call. Resolves to {ok, status, data, message}; never rejects. */
  async function call(method, url, body, raw, keepalive) {
    var headers = { "X-CSRF-Token": csrf(), "Accept": "application/json" };
    var init = { method: method, headers: headers, credentials: "same-origin", keepalive: !!keepalive };
    if (body !== undefined) {
      if (raw) { init.body = body; } else { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    }
    var response;
    try { response = await fetch(url, init); } catch (e) {
      return { ok: false, status: 0, data: null, message: tr("js.network_error") };
    }
    var text = await response.text();
    var data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    var message = data && data.message ? data.message : (response.ok ? "" : tr("js.failed", { status: response.status }));
    return { ok: response.ok, status: response.status, data: data, message: message };
  }

  var toastTimer = null;
  function toast(message, bad) {
    var box = document.getElementById("toast");
    if (!box) { return; }
    box.textContent = message;
    box.className = "toast" + (bad ? " bad" : "");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { box.hidden = true; }, bad ? 8000 : 4000);
  }

  /* Run fn with `buttons` disabled; a second click while it runs does nothing. */
  async function guarded(owner, buttons, fn) {
    if (owner.dataset.busy) { return undefined; }
    owner.dataset.busy = "1";
    buttons.forEach(function (b) { b.disabled = true; b.setAttribute("aria-busy", "true"); });
    try { return await fn(); } finally {
      delete owner.dataset.busy;
      buttons.forEach(function (b) { b.disabled = b.dataset.off === "1"; b.removeAttribute("aria-busy"); });
    }
  }

  /* A modal <dialog>: resolves true when its confirm button is pressed, false otherwise. */
  function confirmDialog(dialog, text) {
    return new Promise(function (resolve) {
      var name = dialog.querySelector("[data-role=delete-name]");
      if (name) { name.textContent = text || ""; }
      var box = dialog.querySelector("input[type=checkbox]");
      if (box) { box.checked = false; }
      var ok = dialog.querySelector("[data-role=confirm]");
      var cancel = dialog.querySelector("[data-role=cancel]");
      function finish(value) {
        ok.removeEventListener("click", onOk);
        cancel.removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        if (dialog.open) { dialog.close(); }
        resolve(value);
      }
      function onOk() { finish(true); }
      function onCancel() { finish(false); }
      ok.addEventListener("click", onOk);
      cancel.addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      if (dialog.showModal) { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
      cancel.focus();
    });
  }

  /* ---------------------------------------------------------------- my instances */

  var MAX_STREAMS = 4;
  var STABLE = ["queued", "running", "paused", "failed", "deleted"];
  var streams = {};

  function part(card, role) { return card.querySelector("[data-role=" + role + "]"); }

  function setState(card, state) {
    if (!state || card.dataset.state === "deleted") { return; }
    card.dataset.state = state;
    var label = part(card, "state");
    label.textContent = tr("state." + state);
    label.className = "state state-" + state;
    var bar = part(card, "progress");
    if (state === "running") { bar.value = bar.max; }
    if (state === "paused" || state === "deleted") { bar.value = 0; }
    if (state !== "failed") { part(card, "reason").hidden = true; }
    if (state !== "queued") { part(card, "queue").hidden = true; }
    if (state === "deleted") {
      card.classList.add("gone");
      all("button", card).forEach(function (b) { b.dataset.off = "1"; b.disabled = true; });
      closeStream(card.dataset.id);
    }
  }

  /* Show only the buttons the state allows: `actions` as the API reports it (domain.actions). */
  function showActions(card, actions) {
    if (!Array.isArray(actions) || card.dataset.state === "deleted") { return; }
    all("[data-role=actions] [data-offer]", card).forEach(function (b) {
      b.hidden = actions.indexOf(b.dataset.offer) < 0;
    });
  }

  /* After a transition: the instance as the API reports it now (its state and actions). Only
   * the newest answer counts, so a slow answer cannot bring back an older state's buttons. */
  function ask(card) {
    var asked = (Number(card.dataset.asked) || 0) + 1;
    card.dataset.asked = asked;
    return function newest() { return Number(card.dataset.asked) === asked; };
  }

  async function refresh(card) {
    var newest = ask(card);
    var r = await call("GET", "/api/instances/" + card.dataset.id);
    if (!r.ok || !r.data || !newest()) { return; }
    setState(card, r.data.state);
    showActions(card, r.data.actions);
  }

  function showReason(card, text, code) {
    var suffix = code === null || code === undefined ? "" : " (" + tr("js.exit_code", { code: code }) + ")";
    part(card, "reason-text").textContent = (text || "") + suffix;
    part(card, "reason").hidden = false;
  }

  function onEvent(card, event) {
    if (event.id) { card.dataset.after = event.id; }
    var message = part(card, "message");
    if (event.kind === "transition" && event.to) {
      setState(card, event.to);
      refresh(card);
      message.textContent = event.message || "";
      if (event.to === "failed") { showReason(card, event.message, null); }
    } else if (event.kind === "progress" && event.data) {
      var bar = part(card, "progress");
      bar.max = event.data.steps || bar.max;
      bar.value = event.data.step || 0;
      message.textContent = event.message || "";
    } else if (event.kind === "exit") {
      showReason(card, event.message, event.data ? event.data.exit_code : null);
    }
  }

  function closeStream(id) {
    if (streams[id]) { streams[id].close(); delete streams[id]; }
  }

  /* Follow one instance's live events. Browsers allow few connections per host, so at most
   * MAX_STREAMS are open; the others are refreshed by a light poll of GET /api/instances. */
  function subscribe(card) {
    var id = card.dataset.id;
    if (streams[id] || card.dataset.state === "deleted" || !window.EventSource) { return; }
    var open = Object.keys(streams);
    if (open.length >= MAX_STREAMS) {
      var idle = open.filter(function (other) {
        var c = document.querySelector('[data-id="' + other + '"]');
        return !c || STABLE.indexOf(c.dataset.state) >= 0;
      })[0];
      if (!idle) { return; }
      closeStream(idle);
    }
    var source = new EventSource("/api/instances/" + id + "/events/stream?after=" + (card.dataset.after || 0));
    ["transition", "progress", "exit", "action"].forEach(function (kind) {
      source.addEventListener(kind, function (e) {
        try { onEvent(card, JSON.parse(e.data)); } catch (err) { /* ignore a malformed event */ }
      });
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) { delete streams[id]; }
    };
    streams[id] = source;
  }

  /* Every few seconds: the state of instances without a live stream, and instances created
   * elsewhere (another tab, the command line) since the page was rendered. */
  async function poll(cards) {
    if (document.hidden) { return; }
    var answer = await call("GET", "/api/instances");
    if (!answer.ok || !Array.isArray(answer.data)) { return; }
    var byId = {};
    answer.data.forEach(function (i) { byId[i.id] = i; });
    var known = {};
    cards.forEach(function (c) { known[c.dataset.id] = true; });
    if (answer.data.some(function (i) { return !known[i.id] && i.state !== "deleted"; })) {
      window.location.reload();
      return;
    }
    var unwatched = cards.filter(function (c) { return !streams[c.dataset.id] && c.dataset.state !== "deleted"; });
    unwatched.forEach(function (card) {
      var now = byId[card.dataset.id];
      if (!now) { setState(card, "deleted"); return; }
      if (now.state !== card.dataset.state) {
        setState(card, now.state);
        part(card, "message").textContent = now.reason || "";
        if (now.state === "failed") { showReason(card, now.reason, now.exit_code); }
      }
      showActions(card, now.actions);
    });
    cards.forEach(function (card) {
      var now = byId[card.dataset.id];
      if (now && card.dataset.state !== "deleted") { showGpu(card, now); }
    });
  }

  /* The GPU lines of a card, from the instance as GET /api/instances reports it. */
  function showGpu(card, inst) {
    var queue = part(card, "queue");
    var q = inst.state === "queued" && card.dataset.state === "queued" ? inst.queue : null;
    if (q) {
      part(card, "message").textContent = "";  // the queue line says it in the page's language
      var place = { position: q.position, length: q.length };
      if (q.estimate_s === null || q.estimate_s === undefined) {
        queue.textContent = tr("js.queue_wait_unknown", place);
      } else {
        place.minutes = Math.max(1, Math.round(q.estimate_s / 60));
        queue.textContent = tr("js.queue_wait_min", place);
      }
    }
    queue.hidden = !q;
    var box = part(card, "gpu");
    var gpu = inst.gpu;
    box.hidden = !gpu;
    if (!gpu) { return; }
    var types = (gpu.types.length ? gpu.types : gpu.gpu_ids).join(", ");
    part(box, "gpu-held").textContent = gpu.share_gib === null
      ? tr("js.gpu_whole", { n: gpu.gpu_ids.length, types: types })
      : tr("js.gpu_share", { gib: gpu.share_gib, types: types });
    part(box, "gpu-used").textContent = gpu.memory_used_mib === null ? "" : " · " + tr("js.gpu_memory_used", { mib: gpu.memory_used_mib });
    part(box, "placement").textContent = gpu.placement ? tr("js.gpu_placement", { placement: gpu.placement }) : "";
  }

  async function showLog(card) {
    var pre = part(card, "log");
    var response = await fetch("/api/instances/" + card.dataset.id + "/logs?tail=200", { credentials: "same-origin" });
    pre.textContent = response.ok ? ((await response.text()) || tr("js.log_empty")) : tr("js.failed", { status: response.status });
    pre.hidden = false;
  }

  async function instanceAction(card, action) {
    var id = card.dataset.id;
    var buttons = all("[data-role=actions] button", card);
    if (action === "delete") {
      var dialog = document.getElementById("delete-dialog");
      if (!(await confirmDialog(dialog, card.dataset.name))) { return; }
      var withData = document.getElementById("delete-data").checked;
      await guarded(card, buttons, async function () {
        var r = await call("DELETE", "/api/instances/" + id + "?delete_data=" + (withData ? "true" : "false"));
        if (!r.ok) { toast(r.message, true); return; }
        subscribe(card);
        toast(tr("js.deleting", { name: card.dataset.name }));
      });
      return;
    }
    await guarded(card, buttons, async function () {
      subscribe(card);  // before the answer: it comes after the controller's first step
      var newest = ask(card);
      var r = await call("POST", "/api/instances/" + id + "/" + action);
      if (!r.ok) { toast(r.message, true); return; }
      if (r.data && r.data.state && newest()) { setState(card, r.data.state); showActions(card, r.data.actions); }
    });
  }

  async function share(card, form) {
    var target = form.elements.target.value.trim();
    var kind = form.elements.kind.value;
    if (!target) { form.elements.target.focus(); return; }
    var body = kind === "team" ? { team: target } : { user: target };
    await guarded(form, all("button", form), async function () {
      var r = await call("POST", "/api/instances/" + card.dataset.id + "/shares", body);
      if (!r.ok) { toast(r.message, true); return; }
      var item = document.createElement("li");
      item.dataset.share = r.data.id;
      var label = document.createElement("span");
      label.textContent = tr(kind === "team" ? "js.shared_team" : "js.shared_user", { name: target });
      var revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "link";
      revoke.dataset.action = "unshare";
      revoke.dataset.share = r.data.id;
      revoke.textContent = tr("js.revoke");
      item.appendChild(label);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(revoke);
      part(form, "shares").appendChild(item);
      form.elements.target.value = "";
      toast(tr("js.shared", { name: target }));
    });
  }

  function initHome() {
    var cards = all("li.instance[data-id]");
    cards.sort(function (a, b) {
      return (STABLE.indexOf(a.dataset.state) >= 0) - (STABLE.indexOf(b.dataset.state) >= 0);
    }).forEach(subscribe);
    var delays = [1000, 2000, 3000];  // soon after loading (a create may still be on its way)
    (function next() {
      setTimeout(async function () { await poll(cards); next(); }, delays.shift() || 5000);
    })();
    document.addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action]");
      var card = button && button.closest("li.instance");
      if (!card) { return; }
      var action = button.dataset.action;
      if (action === "logs") { showLog(card); return; }
      if (action === "unshare") {
        guarded(button, [button], async function () {
          var r = await call("DELETE", "/api/instances/" + card.dataset.id + "/shares/" + button.dataset.share);
          if (!r.ok) { toast(r.message, true); return; }
          button.closest("li").remove();
        });
        return;
      }
      instanceAction(card, action);
    });
    document.addEventListener("submit", function (e) {
      var form = e.target.closest("form[data-role=share-form]");
      if (!form) { return; }
      e.preventDefault();
      share(form.closest("li.instance"), form);
    });
  }

  /* ---------------------------------------------------------------- catalog */

  function initCatalog() {
    document.addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action=create]");
      if (!button) { return; }
      // One request id per intended instance: a double click or a retry creates only one.
      button.dataset.requestId = button.dataset.requestId || newRequestId();
      // The page stays put (the instance starts in the background); the card links to it.
      guarded(button, [button], async function () {
        // keepalive: the create completes even if the user leaves the page at once.
        var r = await call("POST", "/api/instances", { template: button.dataset.template, request_id: button.dataset.requestId }, false, true);
        if (!r.ok) { toast(r.message, true); return; }
        var note = button.closest("li").querySelector("[data-role=created]");
        note.textContent = tr(r.status === 201 ? "js.created" : "js.already_created", { name: r.data.name }) + " ";
        var link = document.createElement("a");
        link.href = "/#instance-" + r.data.id;
        link.textContent = tr("js.see_instances");
        note.appendChild(link);
        note.hidden = false;
      });
    });
  }

  /* ---------------------------------------------------------------- files */

  function initFiles() {
    var box = document.querySelector(".upload[data-family]");
    var input = document.getElementById("upload");
    if (!box || !input) { return; }
    var family = box.dataset.family;
    var folder = box.dataset.path;
    var status = part(box, "upload-status");
    function content(path) { return "/api/files/" + encodeURIComponent(family) + "/content?path=" + encodeURIComponent(path); }
    input.addEventListener("change", function () {
      var files = Array.prototype.slice.call(input.files || []);
      if (!files.length) { return; }
      guarded(box, [input], async function () {
        var failed = false;
        for (var i = 0; i < files.length; i++) {
          status.textContent = tr("js.uploading", { name: files[i].name, n: i + 1, total: files.length });
          var r = await call("PUT", content((folder ? folder + "/" : "") + files[i].name), files[i], true);
          if (!r.ok) { failed = true; toast(files[i].name + ": " + r.message, true); status.textContent = r.message; break; }
        }
        input.value = "";
        if (!failed) { status.textContent = tr("js.uploaded"); window.location.reload(); }
      });
    });
    document.addEventListener("click", async function (e) {
      var button = e.target.closest("button[data-action=delete-file]");
      if (!button) { return; }
      if (!(await confirmDialog(document.getElementById("file-delete-dialog"), button.dataset.name))) { return; }
      guarded(button, [button], async function () {
        var r = await call("DELETE", content(button.dataset.path));
        if (!r.ok) { toast(r.message, true); return; }
        window.location.reload();
      });
    });
  }

  /* ---------------------------------------------------------------- account */

  function initAccount() {
    var tokenForm = document.getElementById("token-form");
    tokenForm.addEventListener("submit", function (e) {
      e.preventDefault();
      var scopes = all("input[name=scope]:checked", tokenForm).map(function (b) { return b.value; });
      var days = tokenForm.elements.expires.value;
      var body = { name: tokenForm.elements.name.value.trim(), scopes: scopes, expires_in_days: days ? Number(days) : null };
      guarded(tokenForm, all("button", tokenForm), async function () {
        var r = await call("POST", "/api/tokens", body);
        if (!r.ok) { toast(r.message, true); return; }
        var dialog = document.getElementById("token-dialog");
        document.getElementById("token-secret").textContent = r.data.token;
        dialog.querySelector("[data-role=cancel]").onclick = function () { dialog.close(); window.location.reload(); };
        dialog.querySelector("[data-role=copy]").onclick = function () {
          if (navigator.clipboard) { navigator.clipboard.writeText(r.data.token).then(function () { toast(tr("js.copied")); }); }
        };
        tokenForm.reset();
        if (dialog.showModal) { dialog.showModal(); } else { dialog.setAttribute("open", ""); }
      });
    });
    document.addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action=revoke-token], button[data-action=end-session]");
      if (!button) { return; }
      var revoke = button.dataset.action === "revoke-token";
      guarded(button, [button], async function () {
        var r = await call("DELETE", (revoke ? "/api/tokens/" : "/api/me/sessions/") + button.dataset.id);
        if (!r.ok) { toast(r.message, true); return; }
        if (!revoke && button.dataset.current === "yes") { window.location.href = "/auth/login"; return; }
        button.closest("tr").remove();
        toast(tr(revoke ? "js.token_revoked" : "js.session_ended"));
      });
    });
    var pw = document.getElementById("password-form");
    if (!pw) { return; }
    pw.addEventListener("submit", function (e) {
      e.preventDefault();
      if (pw.elements.new.value !== pw.elements.confirm.value) { toast(tr("js.password_mismatch"), true); return; }
      guarded(pw, all("button", pw), async function () {
        var r = await call("POST", "/api/me/password", { current_password: pw.elements.current.value, new_password: pw.elements.new.value });
        if (!r.ok) { toast(r.message, true); return; }
        pw.reset();
        toast(tr("js.password_changed"));
      });
    });
  }

  /* ---------------------------------------------------------------- admin: instances */

  function initAdminInstances() {
    var boxes = all("input[data-role=select]");
    var selectAll = document.querySelector("input[data-role=select-all]");
    var count = document.querySelector("[data-role=selected-count]");
    var result = document.querySelector("[data-testid=batch-result]");
    var batchButtons = all("button[data-batch]");
    function chosen() { return boxes.filter(function (b) { return b.checked; }); }
    function recount() { count.textContent = tr("js.selected", { n: chosen().length }); }
    if (selectAll) {
      selectAll.addEventListener("change", function () { boxes.forEach(function (b) { b.checked = selectAll.checked; }); recount(); });
    }
    boxes.forEach(function (b) { b.addEventListener("change", recount); });
    async function apply(action, id, withData) {
      return action === "delete"
        ? call("DELETE", "/api/instances/" + id + "?delete_data=" + (withData ? "true" : "false"))
        : call("POST", "/api/instances/" + id + "/" + action);
    }
    /* The row's allowed actions (domain.actions); a queued row's pause is its leave_queue. */
    function allows(row, action) {
      var offered = row ? (row.dataset.actions || "").split(" ") : [];
      return offered.indexOf(action) >= 0 || (action === "pause" && offered.indexOf("leave_queue") >= 0);
    }
    function skip(row, id) {
      var item = document.createElement("li");
      item.dataset.id = id;
      item.className = "skipped";
      var label = row.querySelector("[data-role=state]").textContent;
      item.textContent = tr("js.batch_skipped", { name: row.dataset.name, state: label });
      result.appendChild(item);
    }
    function report(row, id, answer) {
      var item = document.createElement("li");
      item.dataset.id = id;
      item.className = answer.ok ? "ok" : "warn";
      var name = row ? row.dataset.name : id;
      item.textContent = answer.ok
        ? tr("js.batch_ok", { name: name, state: tr("state." + answer.data.state) })
        : tr("js.batch_failed", { name: name, message: answer.message });
      result.appendChild(item);
      if (answer.ok && row) {
        var label = row.querySelector("[data-role=state]");
        label.textContent = tr("state." + answer.data.state);
        label.className = "state state-" + answer.data.state;
        row.dataset.actions = (answer.data.actions || []).join(" ");
      }
    }
    batchButtons.forEach(function (button) {
      button.addEventListener("click", async function () {
        var ids = chosen().map(function (b) { return b.value; });
        if (!ids.length) { toast(tr("js.select_some"), true); return; }
        var action = button.dataset.batch;
        var withData = false;
        if (action === "delete") {
          if (!(await confirmDialog(document.getElementById("delete-dialog"), tr("js.selected", { n: ids.length })))) { return; }
          withData = document.getElementById("delete-data").checked;
        }
        guarded(result, batchButtons, async function () {
          result.textContent = "";
          var queue = ids.slice();
          async function worker() {
            while (queue.length) {
              var id = queue.shift();
              var row = document.querySelector('tr[data-id="' + id + '"]');
              if (row && !allows(row, action)) { skip(row, id); continue; }
              report(row, id, await apply(action, id, withData));
            }
          }
          await Promise.all([worker(), worker(), worker(), worker()]);
          var summary = document.createElement("li");
          summary.textContent = tr("js.batch_done", { n: ids.length });
          result.appendChild(summary);
        });
      });
    });
  }

  /* ---------------------------------------------------------------- admin: users */

  function teamId(name) {
    var option = all("#team-names option").filter(function (o) { return o.value === name; })[0];
    return option ? option.dataset.id : null;
  }

  async function userAction(row, button) {
    var id = row.dataset.id;
    var action = button.dataset.action;
    var body = action === "admin" ? { is_admin: row.dataset.admin !== "yes" } : { disabled: action === "disable" };
    var r = await call("PATCH", "/api/users/" + id, body);
    if (!r.ok) { toast(r.message, true); return; }
    row.dataset.admin = r.data.is_admin ? "yes" : "no";
    row.dataset.disabled = r.data.disabled ? "yes" : "no";
    row.querySelector("[data-action=disable]").hidden = r.data.disabled;
    row.querySelector("[data-action=enable]").hidden = !r.data.disabled;
    part(row, "disabled-label").hidden = !r.data.disabled;
    part(row, "enabled-label").hidden = r.data.disabled;
    part(row, "admin-label").hidden = !r.data.is_admin;
    var toggle = row.querySelector("[data-action=admin]");
    toggle.textContent = r.data.is_admin ? toggle.dataset.unmake : toggle.dataset.make;
    toast(tr("js.saved"));
  }

  function initAdminUsers() {
    document.addEventListener("click", function (e) {
      var button = e.target.closest("button[data-action]");
      var row = button && button.closest("tr[data-id]");
      if (!row) { return; }
      if (button.dataset.action === "leave") {
        guarded(button, [button], async function () {
          var r = await call("DELETE", "/api/teams/" + button.dataset.team + "/members/" + row.dataset.id);
          if (!r.ok) { toast(r.message, true); return; }
          button.closest("li").remove();
        });
        return;
      }
      guarded(row, all(".row-actions button", row), function () { return userAction(row, button); });
    });
    document.addEventListener("submit", function (e) {
      var form = e.target;
      if (form.dataset.role === "join") {
        e.preventDefault();
        var row = form.closest("tr[data-id]");
        var name = form.elements.team.value.trim();
        var id = teamId(name);
        if (!id) { toast(tr("js.no_team", { name: name }), true); return; }
        guarded(form, all("button", form), async function () {
          var r = await call("PUT", "/api/teams/" + id + "/members/" + row.dataset.id);
          if (!r.ok) { toast(r.message, true); return; }
          window.location.reload();
        });
      } else if (form.id === "team-form") {
        e.preventDefault();
        guarded(form, all("button", form), async function () {
          var r = await call("POST", "/api/teams", { name: form.elements.name.value.trim() });
          if (!r.ok) { toast(r.message, true); return; }
          window.location.reload();
        });
      }
    });
  }

  function initAdminTemplates() {
    var button = document.querySelector("button[data-action=reload-templates]");
    if (!button) { return; }
    button.addEventListener("click", function () {
      guarded(button, [button], async function () {
        var r = await call("POST", "/api/templates/reload");
        if (!r.ok) { toast(r.message, true); return; }
        window.location.reload();
      });
    });
  }

  /* ---------------------------------------------------------------- admin: GPUs */

  function initAdminGpus() {
    // The buttons are plain forms; draining restarts engines, so it asks first.
    document.addEventListener("submit", function (e) {
      var form = e.target;
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) { e.preventDefault(); }
    });
  }

  var pages = {
    "home": initHome,
    "catalog": initCatalog,
    "files": initFiles,
    "account": initAccount,
    "admin-instances": initAdminInstances,
    "admin-users": initAdminUsers,
    "admin-templates": initAdminTemplates,
    "admin-gpus": initAdminGpus
  };
  var init = pages[document.body.dataset.page];
  if (init) { init(); }
})();
