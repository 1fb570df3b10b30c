"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n).toLocaleString();
let source = null, current = null, history = [];

function bars(el, map) {
  const entries = Object.entries(map || {});
  if (!entries.length) { el.textContent = "no data"; el.className = "empty"; return; }
  el.className = "";
  const max = Math.max(...entries.map(([, v]) => v), 1);
  el.replaceChildren(...entries.map(([k, v]) => {
    const row = document.createElement("div"); row.className = "bar";
    const label = document.createElement("label"); label.textContent = k;
    const bar = document.createElement("div"); bar.style.width = (160 * v / max) + "px";
    const num = document.createElement("em"); num.textContent = fmt(v);
    row.append(label, bar, num); return row;
  }));
}

function chart(s) {
  history.push(s.issued); if (history.length > 120) history.shift();
  const max = Math.max(s.capacity, 1), n = Math.max(history.length - 1, 1);
  $("line").setAttribute("points", history.map((v, i) => `${(300 * i / n).toFixed(1)},${(100 - 100 * v / max).toFixed(1)}`).join(" "));
}

function show(s) {
  for (const k of ["issued", "remaining", "admitted", "queued", "revenue"]) $(k).textContent = fmt(s[k]);
  bars($("gender"), s.by_gender); bars($("age"), s.by_age_group); chart(s);
}

async function refreshCampaigns() {
  const r = await fetch("/api/v1/campaigns"); if (!r.ok) return;
  const { campaigns } = await r.json();
  const nav = $("campaigns");
  if (!campaigns.length) { nav.innerHTML = '<p class="empty">none yet</p>'; return; }
  nav.replaceChildren(...campaigns.map((c) => {
    const a = document.createElement("a"); a.href = "#" + c.id; a.dataset.id = c.id;
    a.className = c.id === current ? "active" : "";
    a.textContent = c.name;
    const sub = document.createElement("small"); sub.textContent = `${c.id} · ${c.status}`; a.append(sub);
    return a;
  }));
  const wanted = location.hash.slice(1) || campaigns[0].id;
  if (wanted !== current && campaigns.some((c) => c.id === wanted)) watch(wanted);
  const c = campaigns.find((c) => c.id === current);
  if (c) {
    $("title").textContent = c.name;
    const rows = Object.entries(c.plugins || {});
    $("plugins").replaceChildren(...(rows.length ? rows.map(([role, v]) => {
      const tr = document.createElement("tr"); const a = document.createElement("td"); const b = document.createElement("td");
      a.textContent = role; b.textContent = v.replace("sha256:", "").slice(0, 12); b.title = v; tr.append(a, b); return tr;
    }) : [Object.assign(document.createElement("tr"), { innerHTML: '<td colspan="2" class="empty">none</td>' })]));
  }
}

async function refreshOps() {
  const r = await fetch("/metrics"); if (!r.ok) return;
  const text = await r.text(); let outbox = 0, dead = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("firstcome_outbox_unpublished")) outbox = Number(line.split(" ").pop());
    if (line.startsWith("firstcome_events_dead_lettered_total")) dead += Number(line.split(" ").pop());
  }
  $("outbox").textContent = fmt(outbox); $("dead").textContent = fmt(dead);
}

function watch(id) {
  if (source) source.close();
  current = id; history = [];
  document.querySelectorAll("#campaigns a").forEach((a) => a.classList.toggle("active", a.dataset.id === id));
  source = new EventSource(`/api/v1/campaigns/${encodeURIComponent(id)}/stats/stream`);
  source.addEventListener("stats", (e) => { $("state").textContent = "live"; $("state").className = "live"; show(JSON.parse(e.data)); });
  source.onerror = async () => {
    $("state").textContent = "reconnecting…"; $("state").className = "";
    // A campaign's statistics are private unless it sets public_stats = true: say so, stop retrying.
    const r = await fetch(`/api/v1/campaigns/${encodeURIComponent(id)}/stats`).catch(() => null);
    const body = r && r.status === 404 ? await r.json().catch(() => ({})) : {};
    if (body.code === "private_stats" && current === id) { source.close(); $("state").textContent = "statistics private (public_stats = false)"; }
  };
}

window.addEventListener("hashchange", () => { const id = location.hash.slice(1); if (id && id !== current) watch(id); refreshCampaigns(); });
refreshCampaigns(); refreshOps();
setInterval(refreshCampaigns, 5000); setInterval(refreshOps, 2000);
