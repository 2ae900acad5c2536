/* The technician status page: renders /api/v1/status and /api/v1/doctor, refreshed every 10 s.
   Everything the device reports is set as text (never as HTML), escaped once more by CK.safe.
   Spec: docs/configuration.md#kiosk-screen-and-status-page. */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const t = (k, v) => CK.t(k, v);
  let status = null, doctor = null, failed = false;

  function kv(id, rows) {
    $(id).replaceChildren(...rows.flatMap(([k, v]) => [CK.el("dt", {}, t(k)), CK.el("dd", {}, value(v))]));
  }

  function value(v) {
    if (v === null || v === undefined || v === "") return t("status_page.not_set");
    if (v === true) return t("status_page.yes");
    if (v === false) return t("status_page.no");
    if (Array.isArray(v)) return v.length ? v.map((x) => CK.safe(typeof x === "object" ? JSON.stringify(x) : x)).join(", ") : t("status_page.none");
    if (typeof v === "object") return CK.safe(JSON.stringify(v));
    return CK.safe(v);
  }

  function ago(ms) { return ms ? `${CK.clockTime(ms / 1000)} (${CK.age(Math.max(0, Date.now() - ms) / 1000)})` : null; }

  function mark(level) { return CK.icon(`mark-${level}`, "mark"); }

  function renderStatus() {
    const st = status;
    document.body.dataset.state = st.state;
    const lv = st.state === "ok" ? "ok" : st.state === "error" ? "bad" : "warn";
    const why = [];
    if (st.readiness && !st.readiness.ready) {  // the same answer as the kiosk and doctor (scanner/appliance/readiness.py)
      why.push(CK.el("span", { class: "why", id: "readiness", "data-readiness": st.readiness.code },
        t(`readiness.${st.readiness.code}`)));
    }
    if (st.problems.length) why.push(CK.el("span", { class: "why" }, `${t("status_page.problems")}: ${st.problems.map(CK.problem).join(", ")}`));
    if (st.degraded.length) {
      why.push(CK.el("span", { class: "why" },
        `${t("status_page.degraded")}: ${st.degraded.map((f) => t(`degraded.${f}`)).join(", ")}`));
    }
    $("state").replaceChildren(CK.el("span", { class: "pill", "data-level": lv }, mark(lv),
      t(`status_page.state_${st.state}`)), ...why);
    kv("overview-kv", [
      ["status_page.name", st.device.name], ["status_page.device", st.device.id],
      ["status_page.checkpoint", st.device.checkpoint], ["status_page.mode", t(`mode.${st.mode}`)],
      ["status_page.version", st.version], ["status_page.uptime", CK.duration(st.uptime_s)],
      ["status_page.direction", t(`kiosk.dir_${st.direction}`)],
    ]);
    const d = st.today || {};
    kv("today-kv", [
      ["status_page.scans", d.scans], ["status_page.accepted", d.accepted], ["status_page.rejected", d.rejected],
      ["status_page.duplicates", d.duplicates], ["status_page.in", d.in], ["status_page.out", d.out],
      ["status_page.occupancy", d.occupancy], ["status_page.did_not_pass", d.did_not_pass],
    ]);
    $("inputs-body").replaceChildren(...st.inputs.map((i) => {
      const ilv = i.state === "ok" || i.state === "finished" ? "ok" : i.state === "failed" || i.state === "reopening" ? "bad" : "warn";
      return CK.el("tr", { "data-level": ilv }, CK.el("td", {}, t(`input_kind.${i.kind}`)), CK.el("td", {}, i.id),
        CK.el("td", {}, mark(ilv), t(`input_state.${i.state}`) + (i.reason ? ` (${i.reason})` : "")), CK.el("td", {}, String(i.scans)),
        CK.el("td", {}, String(i.issues)));
    }));
    const s = st.sync;
    kv("sync-kv", [
      ["status_page.enabled", s.enabled], ["status_page.pending", s.pending],
      ["status_page.oldest", ago(s.oldest_pending_ms)], ["status_page.last_success", ago(s.last_success_ms)],
      ["status_page.last_error", s.last_error_code ? `${codeWords(s.last_error_code)} (${s.last_error_code})` : null], ["status_page.alarms", s.alarms],
    ]);
    const site = st.site;  // a gate of a site: the peers it hears, their last message and clock skew
    $("site-card").hidden = !site;
    if (site) {
      kv("site-kv", [
        ["status_page.site_id", site.site_id], ["status_page.isolated", site.isolated],
        ["status_page.when_isolated", site.when_isolated],
        ["status_page.site_occupancy", site.capacity ? `${site.occupancy} / ${site.capacity}` : site.occupancy],
        ["status_page.in", site.in], ["status_page.out", site.out], ["status_page.listen", site.listen],
      ]);
      $("peers-body").replaceChildren(...(site.peers.length ? site.peers.map((p) => {
        const plv = p.alive ? "ok" : "bad";
        return CK.el("tr", { "data-level": plv, "data-peer": p.device_id }, CK.el("td", {}, mark(plv), p.device_id),
          CK.el("td", {}, p.address), CK.el("td", {}, `${p.last_kind} · ${ago(p.last_heard_ms)}`),
          CK.el("td", {}, `${(p.skew_ms / 1000).toFixed(2)} s`), CK.el("td", {}, String(p.last_seq)));
      }) : [CK.el("tr", {}, CK.el("td", { colSpan: 5 }, t("status_page.none")))]));
    }
    const tr = st.trust;
    kv("trust-kv", [
      ["status_page.bundle", tr.version === null ? null : `v${tr.version}`], ["status_page.keys", tr.keys],
      ["status_page.issued", tr.issued_at ? CK.clockTime(tr.issued_at) : null],
      ["status_page.age", tr.age_s === null ? null : CK.age(tr.age_s)],
      ["status_page.expires", tr.expires_at ? CK.clockTime(tr.expires_at) : null],
      ["status_page.stale", tr.stale],
      ["status_page.error", tr.error_code ? `${codeWords(tr.error_code)} (${tr.error_code})` : tr.error],
    ]);
    const c = st.clock;
    kv("clock-kv", [
      ["status_page.confirmed", c.confirmed], ["status_page.confirmed_by", c.by ? t(`clock_by.${c.by}`) : null],
      ["status_page.behind", c.behind], ["status_page.kernel", c.kernel ? t(`clock_kernel.${c.kernel}`) : null],
      ["status_page.offset", c.offset_ms === null ? null : `${c.offset_ms} ms`],
    ]);
    const versions = st.versions || {};
    $("versions-kv").replaceChildren(...Object.entries(versions).flatMap(([k, v]) => [
      CK.el("dt", {}, k), CK.el("dd", {}, value(v))]));
    $("config-kv").replaceChildren(...Object.entries(st.config || {}).flatMap(([k, v]) => [
      CK.el("dt", {}, k), CK.el("dd", {}, value(v))]));
    const errors = st.recent_errors || [];
    $("errors-body").replaceChildren(...(errors.length ? errors.slice().reverse().map((e) => CK.el("tr",
      { "data-level": e.level === "warning" ? "warn" : "bad" },
      CK.el("td", {}, CK.clockTime(e.at)), CK.el("td", {}, e.level), CK.el("td", {}, e.logger),
      CK.el("td", { class: "msg" }, e.message)))
      : [CK.el("tr", {}, CK.el("td", { colSpan: 4 }, t("status_page.none")))]));
  }

  // An error's stable code in words: a sync error's, else any error's ([error]); the code itself when it has none.
  function codeWords(code) {
    for (const key of [`sync_error.${code}`, `error.${code}`]) {
      const said = t(key);
      if (said !== key) return said;
    }
    return code;
  }

  // A check's detail or fix in the page's language (the doctor gives every language).
  function said(c, what) { return (c.texts && c.texts[CK.lang] && c.texts[CK.lang][what]) || c[what]; }

  function renderDoctor() {
    $("checks-body").replaceChildren(...doctor.checks.map((c) => {
      const lv = c.status === "pass" ? "ok" : c.status === "warn" ? "warn" : "bad";
      return CK.el("tr", { "data-level": lv, "data-check": c.name },
        CK.el("td", { class: "result" }, mark(lv), t(`status_page.${c.status}`)),
        CK.el("td", { class: "name" }, c.name), CK.el("td", {}, said(c, "detail")),
        CK.el("td", {}, c.status === "pass" ? "" : said(c, "fix")));
    }));
  }

  async function refresh(withDoctor) {
    try {
      status = await CK.getJSON(CK.url("/api/v1/status"));
      renderStatus();
      if (withDoctor || !doctor) {
        doctor = await CK.getJSON(CK.url("/api/v1/doctor"));
        renderDoctor();
      }
      failed = false;
      $("updated").textContent = t("status_page.updated", { time: new Date().toLocaleTimeString(CK.lang === "vi" ? "vi-VN" : "en-GB") });
      document.body.dataset.loaded = "true";
    } catch (err) {
      failed = true;
      $("updated").textContent = t("status_page.unreachable");
    }
    $("updated").dataset.failed = failed ? "true" : "false";
  }

  function applyLang() {
    $("lang").textContent = t("kiosk.other_lang");
    document.title = t("status_page.title");
    if (status) renderStatus();
    if (doctor) renderDoctor();
  }

  async function boot() {
    for (const [id, path] of [["kiosk-link", "/"], ["json-status", "/api/v1/status"], ["json-doctor", "/api/v1/doctor"]]) {
      $(id).href = CK.url(path);
    }
    await CK.patiently(() => CK.loadTexts());
    CK.setLang(CK.pickLang(null));
    applyLang();
    $("lang").addEventListener("click", () => { CK.setLang(CK.lang === "vi" ? "en" : "vi"); applyLang(); });
    $("refresh").addEventListener("click", () => refresh(true));
    await refresh(true);
    let n = 0;
    setInterval(() => refresh(++n % 3 === 0), 10000);  // the doctor (it asks the server) every 30 s
  }

  boot();
})();
