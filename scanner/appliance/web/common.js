/* What the kiosk and status pages share: the API token, JSON calls, the texts of
   scanner/base/translations.toml (served by /api/v1/texts, never copied here) and safe text.
   Spec: docs/configuration.md#kiosk-screen-and-status-page. */
"use strict";

const CK = (() => {
  const params = new URLSearchParams(location.search);
  // From another machine the page is opened as http://DEVICE:8080/?token=T; the token is passed on
  // to every call (no cookie, nothing stored).
  const token = params.get("token");
  let texts = null;
  let lang = "vi";

  function url(path, extra) {
    const q = new URLSearchParams(extra || {});
    if (token) q.set("token", token);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  function headers(more) {
    const h = Object.assign({}, more || {});
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }

  async function getJSON(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  async function postJSON(path, body) {
    const r = await fetch(path, {
      method: "POST", cache: "no-store", body: JSON.stringify(body || {}),
      headers: headers({ "Content-Type": "application/json" }),
    });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  // Retry until the daemon answers (the screen may start before it, or while it restarts).
  async function patiently(fn, onWait) {
    for (let delay = 500; ; delay = Math.min(delay * 2, 5000)) {
      try {
        return await fn();
      } catch (err) {
        if (onWait) onWait(err);
        await new Promise((ok) => setTimeout(ok, delay));
      }
    }
  }

  async function loadTexts() {
    const doc = await getJSON("/api/v1/texts");
    texts = doc.texts;
    return doc.langs;
  }

  function pickLang(fallback) {
    const wanted = params.get("lang") || sessionStorage.getItem("ck.lang") || fallback || "vi";
    return texts && texts[wanted] ? wanted : "vi";
  }

  function setLang(l) {
    lang = texts && texts[l] ? l : "vi";
    sessionStorage.setItem("ck.lang", lang);
    document.documentElement.lang = lang;
    document.querySelectorAll("[data-t]").forEach((el) => { el.textContent = t(el.dataset.t); });
  }

  function t(key, vars) {
    let s = (texts && ((texts[lang] && texts[lang][key]) || (texts.en && texts.en[key]))) || key;
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
    return s;
  }

  // Untrusted text (a name on a card, a log line) is only ever set as textContent; control and
  // direction-changing characters are shown as \uXXXX, as scanner/base/safetext.py does.
  const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;
  function safe(value) {
    if (value === null || value === undefined) return "";
    return String(value).replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : safe(c));
    }
    return node;
  }

  function icon(name, cls) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", cls || "icon");
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS(ns, "use");
    use.setAttribute("href", `#i-${name}`);
    svg.append(use);
    return svg;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 3600) return t("badge.age_min", { n: Math.max(1, Math.round(seconds / 60)) });
    if (seconds < 172800) return t("badge.age_h", { n: Math.round(seconds / 3600) });
    return t("badge.age_d", { n: Math.round(seconds / 86400) });
  }

  // A health problem ("code" or "code:what", scanner/appliance/supervisor.py) in words.
  function problem(code) {
    const i = code.indexOf(":");
    const head = i < 0 ? code : code.slice(0, i);
    if (texts && texts.en && texts.en[`problem.${head}`]) return t(`problem.${head}`, { what: i < 0 ? "" : code.slice(i + 1) });
    if (texts && texts.en && texts.en[`readiness.${code}`]) return t(`readiness.${code}`);
    return code;
  }

  // A duration for people ("4 min 47 s" in English), from [age] of the catalogue.
  function duration(s) {
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? t("age.h_min", { h, m }) : t("age.min_s", { m, s: Math.floor(s % 60) });
  }

  function clockTime(epochSeconds) {
    if (!epochSeconds) return t("status_page.not_set");
    return new Date(epochSeconds * 1000).toLocaleString(lang === "vi" ? "vi-VN" : "en-GB");
  }

  return {
    token, url, getJSON, postJSON, patiently, loadTexts, pickLang, setLang, t, safe, el, icon, age,
    clockTime, problem, duration, get lang() { return lang; },
  };
})();
