/* The kiosk screen's behaviour: the event stream (/api/v1/events) drives the verdict; the status
   (/api/v1/status) feeds counts and health badges; staff toggle the direction and silence the
   alarm. The holder's name and birth year exist only in the DOM while the verdict is shown and are
   removed on the daemon's "clear" event (or after its display time, whichever is first).
   Spec: docs/configuration.md#kiosk-screen-and-status-page. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const S = {
    settings: null,
    status: null,
    health: { state: "starting", problems: [], degraded: [], readiness: null },
    direction: null,
    view: null,            // what the verdict area shows: {kind, ...} or null when idle
    viewTimer: 0,
    es: null,
    backoff: 500,
    statusTimer: 0,
    statusBusy: false,
    toastTimer: 0,
    silenced: false,
    previewCamera: null,
    aim: null,             // the camera's "move closer / further / hold still" while it sees a code it cannot read
    aimTimer: 0,
  };

  const AIM_SHOW_S = 4;  // a hint the daemon has not repeated or withdrawn by then is dropped

  // Verdict-to-paint timings for the benchmark (bench/bench_kiosk.py): no personal data.
  const timings = [];
  window.ckKiosk = { timings };

  function wallNow() { return performance.timeOrigin + performance.now(); }

  const ENROLL_VIEW_S = 180;  // the "enrolling" view at most this long (the server's timeouts are shorter)

  // ------------------------------------------------------------------ the verdict area

  // A device that cannot check cards (scanner/appliance/readiness.py) shows why, and never a card verdict.
  function notReady() {
    const r = S.health.readiness;
    return r && !r.ready && r.code !== "not_provisioned" ? r : null;
  }

  function render() {
    const v = S.view;
    const t = CK.t;
    const word = $("word"), reason = $("reason"), name = $("name"), born = $("born");
    let kind = "idle", symbol = "scan", noteFlags = [];
    const fault = notReady();
    if (fault) {
      kind = "fault";
      symbol = "warn";
      word.textContent = t("kiosk.not_ready");
      reason.textContent = t(`readiness.${fault.code}`);
      body.dataset.readiness = fault.code;
    } else if (v && v.kind === "verdict" && v.data.shown === "duplicate") {
      // already admitted, here or (already inside) at another gate of the site: amber as the LED,
      // never the red of a refusal (the daemon's `shown`, scanner/cards/verdict.py); says when and where
      const d = v.data, before = d.duplicate_of;
      kind = "duplicate";
      symbol = "dup";
      word.textContent = t("decision.duplicate");
      if (before) {
        const place = (S.settings && S.settings.name) || before.checkpoint_id;
        reason.textContent = t(`kiosk.duplicate_${before.direction === "out" ? "out" : "in"}`,
          { time: clockHM(before.at_ms), place: CK.safe(place) });
      } else if (d.inside) {
        reason.textContent = t("kiosk.entered_at", { gate: CK.safe(d.inside.gate), time: clockHM(d.inside.at_ms) });
      } else {
        reason.textContent = t(`reason.${d.reason}`);
      }
      const holder = d.holder;
      name.textContent = holder ? CK.safe(holder.name) : "";
      born.textContent = holder && holder.birth_year ? t("kiosk.born", { year: CK.safe(holder.birth_year) }) : "";
      noteFlags = d.degraded || [];
    } else if (v && v.kind === "verdict") {
      const d = v.data;
      kind = d.decision === "accept" ? "accept" : "reject";
      symbol = kind === "accept" ? "ok" : "no";
      word.textContent = t(`decision.${d.decision}`);
      reason.textContent = t(`reason.${d.reason}`);
      const holder = d.holder;
      name.textContent = holder ? CK.safe(holder.name) : "";
      born.textContent = holder && holder.birth_year ? t("kiosk.born", { year: CK.safe(holder.birth_year) }) : "";
      noteFlags = d.degraded || [];
    } else if (v && v.kind === "error") {
      kind = "error";
      symbol = "warn";
      word.textContent = t("kiosk.device_error");
      reason.textContent = (v.data.message && (v.data.message[CK.lang] || v.data.message.en)) || t("kiosk.error_hint");
    } else if (v && v.kind === "partial") {
      kind = "partial";
      symbol = "scan";
      word.textContent = t("kiosk.scanning");
      reason.textContent = (v.data.message && (v.data.message[CK.lang] || v.data.message.en)) || "";
    } else if (v && v.kind === "enrolling") {  // until the daemon says how the enrollment ended
      kind = "enrolling";
      symbol = "scan";
      word.textContent = t("kiosk.enrolling");
      reason.textContent = t("kiosk.enrolling_hint");
    } else if (S.health.state === "error") {
      kind = "error";
      symbol = "warn";
      word.textContent = t("kiosk.device_error");
      reason.textContent = t("kiosk.error_hint");
    } else {
      word.textContent = t("kiosk.ready");
      const cams = S.settings && S.settings.preview && S.settings.preview.cameras.length;
      reason.textContent = S.health.degraded.includes("not_provisioned") ? t("kiosk.not_provisioned")
        : S.aim ? t(`kiosk.aim_${S.aim}`) : t(cams ? "kiosk.prompt_camera" : "kiosk.prompt");
    }
    if (kind === "idle" && S.aim) body.dataset.aim = S.aim;
    else delete body.dataset.aim;
    if (!fault) delete body.dataset.readiness;
    if (kind !== "accept" && kind !== "reject" && kind !== "duplicate") {
      name.textContent = "";
      born.textContent = "";
    }
    if (kind === "idle" || kind === "error") noteFlags = S.health.degraded || [];
    const note = $("note");
    if (noteFlags.length) {
      $("note-text").textContent = `${t("kiosk.degraded")}: ${noteFlags.map((f) => t(`degraded.${f}`)).join(", ")}`;
      note.hidden = false;
    } else {
      note.hidden = true;
      $("note-text").textContent = "";
    }
    $("symbol").firstElementChild.setAttribute("href", `#i-${symbol}`);
    body.dataset.view = kind;
    fit();
  }

  // Shrink the verdict's symbol and texts (the CSS variable --fit) until the symbol, word, name and
  // reason all fit in the verdict area: a long name (two or three lines) must not push the reason
  // out of view or under the "limited operation" strip.
  function fit() {
    const main = document.querySelector(".verdict-main");
    main.style.setProperty("--fit", "1");
    const parts = ["symbol", "word", "holder", "reason"].map($);
    const over = () => {
      const box = main.getBoundingClientRect();
      const shown = parts.filter((el) => el.getBoundingClientRect().height > 0);
      if (!shown.length) return false;
      const name = $("name");
      return shown[0].getBoundingClientRect().top < box.top - 0.5
        || shown[shown.length - 1].getBoundingClientRect().bottom > box.bottom + 0.5
        || name.scrollHeight > name.clientHeight + 1;
    };
    for (let f = 1; f > 0.5 && over(); ) {
      f = Math.round((f - 0.05) * 100) / 100;
      main.style.setProperty("--fit", String(f));
    }
  }

  // The time of day of an earlier admission, as staff read it ("14:05").
  function clockHM(ms) {
    return new Date(ms).toLocaleTimeString(CK.lang === "vi" ? "vi-VN" : "en-GB", { hour: "2-digit", minute: "2-digit" });
  }

  function show(view, seconds) {
    clearTimeout(S.viewTimer);
    S.view = view;
    render();
    if (seconds) S.viewTimer = setTimeout(() => clearView(), seconds * 1000);
  }

  function clearView() {
    clearTimeout(S.viewTimer);
    S.view = null;
    render();
  }

  function onVerdict(d) {
    if (notReady()) return;  // the daemon sends none then; a late one from before must not cover the fault
    const received = wallNow();
    show({ kind: "verdict", data: d }, d.display_s || (S.settings && S.settings.display_s) || 5);
    // The frame that shows the verdict starts its rendering when this callback runs (the rAF's own
    // timestamp is the frame's nominal start, which may precede the event); a task posted from it
    // runs once that frame has been painted.
    requestAnimationFrame(() => {
      const frame = wallNow();
      const ch = new MessageChannel();
      ch.port1.onmessage = () => {
        timings.push({ seq: d.seq, published: d.published_ms, received, frame, painted: wallNow() });
        if (timings.length > 2000) timings.splice(0, timings.length - 2000);
      };
      ch.port2.postMessage(0);
    });
    body.dataset.seq = String(d.seq);
    refreshStatusSoon(400);  // today's counts (the entry was committed before the event was sent)
  }

  const AIM_ACTIONS = ["closer", "further", "hold_still"];

  function onAim(d) {
    clearTimeout(S.aimTimer);
    S.aim = AIM_ACTIONS.includes(d.action) ? d.action : null;
    if (S.aim) S.aimTimer = setTimeout(() => { S.aim = null; if (!S.view) render(); }, AIM_SHOW_S * 1000);
    if (!S.view) render();
  }

  // ------------------------------------------------------------------ health badges and counts

  function level(ok, warn) { return ok ? "ok" : warn ? "warn" : "bad"; }

  function inputBadge(kinds, key, label) {
    const inputs = ((S.status && S.status.inputs) || []).filter((i) => kinds.includes(i.kind));
    if (!inputs.length) return null;
    const down = inputs.filter((i) => i.state === "failed" || i.state === "reopening");
    const opening = inputs.filter((i) => i.state === "starting" || i.state === "stopped");
    const lv = down.length ? "bad" : opening.length ? "warn" : "ok";
    const value = down.length ? `${CK.t("badge.down")}: ${down.map((i) => i.id).join(", ")}`
      : opening.length ? CK.t("badge.starting") : CK.t("badge.ok");
    return { key, label, level: lv, value };
  }

  function badges() {
    const st = S.status;
    const t = CK.t;
    const out = [];
    const cam = inputBadge(["camera"], "camera", t("badge.camera"));
    if (cam) out.push(cam);
    const reader = inputBadge(["serial", "hid", "stdin"], "reader", t("badge.reader"));
    if (reader) out.push(reader);
    if (!cam && !reader) out.push({ key: "reader", label: t("badge.reader"), level: st ? "bad" : "off", value: t("badge.missing") });
    const degraded = S.health.degraded || [];
    if (!st || !st.sync.enabled) {
      out.push({ key: "sync", label: t("badge.sync"), level: "off", value: t("badge.off") });
    } else {
      const bad = st.sync.alarms.includes("sync_auth_failed");
      const warn = degraded.includes("sync_backlog") || !!st.sync.last_error_code || st.sync.alarms.length > 0;
      out.push({ key: "sync", label: t("badge.sync"), level: bad ? "bad" : warn ? "warn" : "ok",
        value: st.sync.pending ? t("badge.pending", { n: st.sync.pending }) : t("badge.synced") });
    }
    if (st && st.site) {
      const alive = st.site.peers.filter((p) => p.alive).length;
      out.push({ key: "site", label: t("badge.site"), level: st.site.isolated ? "bad" : "ok",
        value: st.site.isolated ? t("badge.isolated") : t("badge.gates", { n: alive + 1 }) });
    }
    if (st) {
      const tr = st.trust;
      const closed = st.config && st.config.trust_policy && st.config.trust_policy.when_stale === "closed";
      let lv = "ok", value;
      if (!tr.keys) { lv = "bad"; value = t("badge.missing"); }
      else if (tr.stale) { lv = closed ? "bad" : "warn"; value = `${t("badge.stale")} · ${CK.age(tr.age_s)}`; }
      else if (tr.error) { lv = "warn"; value = t("badge.refused"); }
      else value = tr.version === null ? t("badge.files") : `v${tr.version} · ${CK.age(tr.age_s)}`;
      out.push({ key: "trust", label: t("badge.trust"), level: lv, value });
      const ck = st.clock;
      const ok = ck.confirmed && !ck.behind;
      out.push({ key: "clock", label: t("badge.clock"), level: level(ok, true),
        value: ok ? t("badge.ok") : ck.behind ? t("badge.behind") : t("badge.unconfirmed") });
    } else {
      out.push({ key: "trust", label: t("badge.trust"), level: "off", value: "–" });
      out.push({ key: "clock", label: t("badge.clock"), level: "off", value: "–" });
    }
    const list = $("badges");
    list.replaceChildren(...out.map((b) => CK.el("li", { class: "badge", "data-level": b.level, "data-badge": b.key },
      CK.icon(`mark-${b.level}`, "mark"),
      CK.el("span", { class: "text" }, CK.el("span", { class: "label" }, b.label),
        CK.el("span", { class: "value" }, b.value)))));
  }

  function counts() {
    const today = S.status && S.status.today;
    $("today").textContent = today ? String(today.accepted) : "–";
    $("rejected").textContent = CK.t("kiosk.rejected", { n: today ? today.rejected : 0 });
    const occ = !!(S.settings && S.settings.occupancy);
    $("occupancy-box").hidden = !occ;
    $("occupancy").textContent = today ? String(today.occupancy) : "–";
    const site = S.status && S.status.site;  // a gate of a site: the whole site's occupancy, and whether it is cut off
    $("site-box").hidden = !site;
    if (site) {
      $("site-occupancy").textContent = site.capacity ? `${site.occupancy} / ${site.capacity}` : String(site.occupancy);
      $("site-box").dataset.isolated = site.isolated ? "true" : "false";
      $("site-sub").textContent = site.isolated ? CK.t("kiosk.site_isolated")
        : CK.t("kiosk.site_gates", { n: site.peers.filter((p) => p.alive).length + 1 });
    }
  }

  function setDirection(direction) {
    S.direction = direction;
    const btn = $("direction");
    btn.dataset.direction = direction || "";
    $("direction-value").textContent = direction ? CK.t(`kiosk.dir_${direction}`) : "–";
  }

  function setHealth(h) {
    S.health = { state: h.state, problems: h.problems || [], degraded: h.degraded || [],
      readiness: h.readiness || null };
    body.dataset.state = h.state;
    if (h.state !== "error") S.silenced = false;
    $("silence").hidden = !(h.state === "error" && !S.silenced);
    if (!S.view) render();
    badges();
  }

  async function refreshStatus() {
    if (S.statusBusy) return;
    S.statusBusy = true;
    try {
      const st = await CK.getJSON(CK.url("/api/v1/status"));
      S.status = st;
      setHealth({ state: st.state, problems: st.problems, degraded: st.degraded, readiness: st.readiness });
      setDirection(st.direction);
      counts();
      body.dataset.statusAt = String(Date.now());
    } catch (err) {
      /* the event stream shows the connection; the next refresh tries again */
    } finally {
      S.statusBusy = false;
    }
  }

  function refreshStatusSoon(ms) {
    clearTimeout(S.statusTimer);
    S.statusTimer = setTimeout(refreshStatus, ms);
  }

  // ------------------------------------------------------------------ preview

  function startPreview() {
    const box = $("preview-box"), img = $("preview");
    const cams = S.settings && S.settings.preview ? S.settings.preview.cameras : [];
    if (!cams.length) {
      box.hidden = true;
      img.removeAttribute("src");
      return;
    }
    S.previewCamera = cams[0];
    box.hidden = false;
    img.src = CK.url(`/api/v1/preview/${encodeURIComponent(cams[0])}`, { n: String(Date.now()) });
  }

  $("preview").addEventListener("error", () => {
    setTimeout(() => { if (body.dataset.connected === "true") startPreview(); }, 3000);
  });

  // leaving the page (the status page, a reload): its two streams end now, not when the browser
  // gets round to it; held open they took the browser's six connections to the device
  window.addEventListener("pagehide", () => {
    if (S.es) S.es.close();
    $("preview").removeAttribute("src");
  });

  // ------------------------------------------------------------------ the event stream

  function setConnected(on) {
    if (!on && S.view) clearView();  // never leave a verdict up that the device may have moved past
    body.dataset.connected = on ? "true" : "false";
  }

  function connect() {
    if (S.es) S.es.close();
    const es = new EventSource(CK.url("/api/v1/events"));
    S.es = es;
    es.addEventListener("open", async () => {
      S.backoff = 500;
      setConnected(true);
      try {
        S.settings = await CK.getJSON(CK.url("/api/v1/kiosk"));
      } catch (err) { /* kept from before */ }
      startPreview();
      counts();
      render();
      refreshStatus();
    });
    es.addEventListener("error", (e) => {
      if (e instanceof MessageEvent) return;  // the daemon's own "error" events, handled below
      setConnected(false);
      if (es.readyState === EventSource.CLOSED) {  // refused (e.g. too many screens): try again later
        es.close();
        setTimeout(connect, S.backoff);
        S.backoff = Math.min(S.backoff * 2, 10000);
      }
    });
    es.addEventListener("verdict", (e) => onVerdict(JSON.parse(e.data)));
    es.addEventListener("clear", () => { if (S.view && S.view.kind === "verdict") clearView(); });
    es.addEventListener("aim", (e) => onAim(JSON.parse(e.data)));
    es.addEventListener("partial", (e) => show({ kind: "partial", data: JSON.parse(e.data) }, 20));
    es.addEventListener("state", (e) => { setHealth(JSON.parse(e.data)); refreshStatusSoon(100); });
    es.addEventListener("direction", (e) => setDirection(JSON.parse(e.data).direction));
    es.addEventListener("site", () => refreshStatusSoon(100));  // the site's occupancy or its gates changed
    es.addEventListener("silence", () => {
      S.silenced = true;
      $("silence").hidden = true;
      toast(CK.t("kiosk.silenced"));
    });
    es.addEventListener("error", (e) => {
      if (!(e instanceof MessageEvent)) return;  // the connection's "error", handled above
      const d = JSON.parse(e.data);
      if (d.code === "not_ready") {  // a card was read but could not be checked: the fault screen, and say so
        S.health.readiness = d.readiness;
        clearView();
        toast(CK.t("kiosk.not_ready_scan"));
        refreshStatusSoon(100);
        return;
      }
      if (d.message) show({ kind: "error", data: d }, (S.settings && S.settings.display_s) || 5);
      else if (d.code === "not_provisioned") toast(CK.t("kiosk.not_provisioned"));
      else if (d.code === "already_provisioned") toast(CK.t("kiosk.already_enrolled"));
      else if (d.code === "enrolling") toast(CK.t("kiosk.enrolling_hint"));
      else if (S.view && S.view.kind === "enrolling") {  // the enrollment's result: it failed
        clearView();
        toast(CK.t("kiosk.enroll_failed"));
      } else toast(CK.t("kiosk.read_problem"));
    });
    // enrollment runs beside the lane: "enrolling" until "enrolled" or an error ends it
    es.addEventListener("enrolling", () => show({ kind: "enrolling" }, ENROLL_VIEW_S));
    es.addEventListener("enrolled", () => {
      if (S.view && S.view.kind === "enrolling") clearView();
      toast(CK.t("kiosk.enrolled"));
      refreshStatus();
    });
  }

  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(S.toastTimer);
    S.toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  // ------------------------------------------------------------------ staff actions

  $("direction").addEventListener("click", async () => {
    const btn = $("direction");
    btn.disabled = true;
    try {
      const r = await CK.postJSON(CK.url("/api/v1/direction"), {});
      setDirection(r.direction);
    } catch (err) {
      toast(CK.t("kiosk.offline"));
    } finally {
      btn.disabled = false;
    }
  });

  $("silence").addEventListener("click", async () => {
    try {
      await CK.postJSON(CK.url("/api/v1/silence"), {});
      S.silenced = true;
      $("silence").hidden = true;
    } catch (err) {
      toast(CK.t("kiosk.offline"));
    }
  });

  $("lang").addEventListener("click", () => {
    CK.setLang(CK.lang === "vi" ? "en" : "vi");
    applyLang();
  });

  window.addEventListener("resize", () => fit());

  function applyLang() {
    $("lang").textContent = CK.t("kiosk.other_lang_short");
    $("lang").title = CK.t("kiosk.other_lang");
    document.title = CK.t("kiosk.title");
    render();
    badges();
    counts();
    setDirection(S.direction);
  }

  // ------------------------------------------------------------------ start

  async function boot() {
    await CK.patiently(async () => {
      await CK.loadTexts();
      S.settings = await CK.getJSON(CK.url("/api/v1/kiosk"));
    });
    CK.setLang(CK.pickLang(S.settings.lang));
    applyLang();
    connect();
    let n = 0;
    setInterval(async () => {
      refreshStatus();
      if (++n % 3 === 0) {  // settings that a reload (SIGHUP) changes, such as showing the occupancy
        try {
          S.settings = await CK.getJSON(CK.url("/api/v1/kiosk"));
          counts();
        } catch (err) { /* kept from before */ }
      }
    }, 10000);
    body.dataset.ready = "true";
  }

  boot();
})();
