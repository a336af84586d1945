"use strict";
const KEY = "hashmesh-token";
function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem(KEY);
}
async function get(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401) { sessionStorage.removeItem(KEY); throw new Error("login"); }
  if (!r.ok) throw new Error((await r.json()).error || r.statusText);
  return r.json();
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) { const td = el("td", c.text, c.cls); if (c.title) td.title = c.title; tr.appendChild(td); }
  tbody.appendChild(tr);
}
function ago(ms) {
  if (!ms) return "never";
  const s = Math.round((Date.now() - ms) / 1000);
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago" : Math.round(s / 3600) + " h ago";
}
function short(id) { return id ? id.slice(0, 18) + "…" : ""; }
function render(status, history, recent) {
  document.getElementById("title").textContent = "hashmesh node " + status.name;
  document.getElementById("node-id").textContent = status.node_id;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString() + (status.running ? "" : " (node not running)");
  document.getElementById("live").textContent = status.live_signals.toLocaleString();
  const coll = document.querySelector("#collections tbody"); coll.replaceChildren();
  for (const [c, n] of Object.entries(status.live_by_collection)) row(coll, [{ text: c }, { text: n.toLocaleString(), cls: "num" }]);
  document.getElementById("counts").textContent = status.batches + " batches stored, " + status.pending_batches + " waiting for predecessors, feed cursor " + status.feed_cursor;
  const keys = document.getElementById("keys"); keys.replaceChildren();
  const revoked = status.revoked_keys || [], certs = status.certificates || [], hands = status.handovers || [];
  if (!revoked.length && !certs.length && !hands.length) keys.appendChild(el("p", "None held: every log is signed by its author's own key.", "muted"));
  for (const r of revoked) keys.appendChild(el("p", "REVOKED: key " + short(r.key) + " in " + (r.collection === "*" ? "every collection" : r.collection) + " after seq " + r.after + " by org " + short(r.org) + ": " + r.reason + (r.effective ? "" : " (not in force: the org holds no certificate the key accepted)"), r.effective ? "bad" : "muted"));
  for (const c of certs) keys.appendChild(el("p", "certificate: key " + short(c.key) + (c.name ? " (" + c.name + ")" : "") + " by org " + short(c.org) + ", " + new Date(c.not_before * 1000).toISOString().slice(0, 10) + " to " + new Date(c.not_after * 1000).toISOString().slice(0, 10) + (c.signers.includes(c.key) ? "" : " (not co-signed by the key)")));
  for (const h of hands) keys.appendChild(el("p", "hand-over: log " + short(h.author) + " in " + h.collection + " from key " + short(h.key) + " to " + short(h.next) + " after seq " + h.seq));
  const forks = document.getElementById("forks"); forks.replaceChildren();
  if (!status.forks.length) forks.appendChild(el("p", "None: every log held is a single history.", "ok"));
  for (const f of status.forks) forks.appendChild(el("p", "FORK: " + f.author + " in " + f.collection + " at seq " + f.seq + " (from " + f.source + ")", "bad"));
  const witness = status.witness || { split_views: [], split_views_total: 0 };
  const splits = document.getElementById("splits"); splits.replaceChildren();
  if (!witness.split_views.length) splits.appendChild(el("p", "None: every head other nodes cosigned matches this node's copy.", "ok"));
  for (const v of witness.split_views) {
    splits.appendChild(el("p", "SPLIT VIEW: " + v.author + " in " + v.collection + " at seq " + v.seq + ", " + v.heads.length + " different heads", "bad"));
    for (const h of v.heads) splits.appendChild(el("p", short(h.head) + " seen by " + h.witnesses.map(short).join(", "), "mono"));
    const proof = { fork: "proven: the author signed both heads, the log is frozen", unproven: "UNPROVEN: no signed header backs it; suspect witness " + (v.suspects || []).map(short).join(", "), unfollowed: "not proven: a log this node does not accept" }[v.proof] || "pending: asking the witnesses for the author's header";
    splits.appendChild(el("p", "proof: " + proof, v.proof === "fork" ? "bad" : "mono"));
  }
  for (const e of witness.equivocating_witnesses || []) splits.appendChild(el("p", "EQUIVOCATING WITNESS: " + short(e.witness) + " signed two heads for " + short(e.author) + " in " + e.collection + " at seq " + e.seq + "; its cosigns are ignored", "bad"));
  if (witness.split_views_total > witness.split_views.length) splits.appendChild(el("p", "… " + (witness.split_views_total - witness.split_views.length) + " more", "bad"));
  const mem = document.getElementById("memberships"); mem.replaceChildren();
  const followed = status.memberships || [];
  if (!followed.length) mem.appendChild(el("p", "None: trust entries and share lists decide every collection.", "ok"));
  for (const m of followed) {
    const text = m.collection + ": version " + m.version + (m.version ? "" : " (none valid held: closed)") + ", " + m.writers.length + " writers, " + m.readers.length + " readers, stewards " + m.anchor.threshold + " of " + m.anchor.stewards.length + " pinned";
    mem.appendChild(el("p", m.conflict ? text + "; CONFLICT at version " + m.conflict.version : text, m.conflict || !m.version ? "bad" : "ok"));
  }
  const peers = document.querySelector("#peers tbody"); peers.replaceChildren();
  for (const p of status.peers) {
    const behind = p.lag_summary ? p.lag_summary.behind : (p.lag || []).reduce((a, l) => a + (l.behind || 0), 0);
    const state = p.cut_off ? { text: "cut off", cls: "bad" } : p.reachable ? { text: "reachable", cls: "ok" } : { text: p.failures ? "unreachable (" + p.failures + " failures)" : "not yet synced", cls: p.failures ? "bad" : "warn" };
    row(peers, [{ text: p.name, title: p.node_id }, state, { text: ago(p.last_sync_ms) }, { text: p.share.join(", ") }, { text: String(behind), cls: "num" }, { text: String(p.score ?? 0), cls: "num" }, { text: p.last_error || "" , cls: "muted" }]);
  }
  const bridges = status.bridges || [];
  const bnone = document.getElementById("bridges-none"); bnone.replaceChildren();
  if (!bridges.length) bnone.appendChild(el("p", status.running ? "None: this node follows no upstream API." : "Known only while the node runs.", "ok"));
  const btab = document.querySelector("#bridges tbody"); btab.replaceChildren();
  for (const b of bridges) {
    const run = b.running || {};
    const state = b.healthy ? { text: run.state || "stopped", cls: "ok" } : { text: "failing (" + b.failures + " in a row)" + (run.retry_at_ms ? ", retry in " + Math.max(0, Math.round((run.retry_at_ms - Date.now()) / 1000)) + " s" : ""), cls: "bad" };
    row(btab, [{ text: b.name }, { text: b.kind + " " + (b.url || b.environment) }, { text: b.collection }, state, { text: ago(b.last_success_ms) }, { text: String(b.counts.added), cls: "num" }, { text: String(b.counts.revoked), cls: "num" }, { text: String(b.live), cls: "num" }, { text: b.last_error || "", cls: "muted" }]);
  }
  const refusals = status.refusals || [];
  const none = document.getElementById("refusals-none"); none.replaceChildren();
  if (!refusals.length) none.appendChild(el("p", status.running ? "None: every batch peers offered was from a trusted author." : "Known only while the node runs.", "ok"));
  const ref = document.querySelector("#refusals tbody"); ref.replaceChildren();
  for (const r of refusals) row(ref, [{ text: r.author_name || short(r.author), title: r.author, cls: "mono" }, { text: r.collection }, { text: r.sender_name || short(r.sender), title: r.sender }, { text: String(r.batches), cls: "num" }, { text: ago(r.last_ms) }, { text: r.fix, cls: "mono" }]);
  const policies = status.policies || [];
  const pnone = document.getElementById("policy-none"); pnone.replaceChildren();
  if (!policies.length) pnone.appendChild(el("p", "No collection has a policy: every hit is a match.", "ok"));
  const pt = document.querySelector("#policy tbody"); pt.replaceChildren();
  for (const p of policies) {
    const rules = [];
    if (p.negative) rules.push("never matches; suppresses the same signal elsewhere (PDQ within " + (p.threshold ?? "the request's threshold") + ")");
    else if (p.threshold !== null) rules.push("PDQ distance over " + p.threshold);
    if (p.min_quality !== null) rules.push("quality under " + p.min_quality);
    if (p.quorum > 1) rules.push("fewer than " + p.quorum + " " + ({ org: "organisations", country: "countries" }[p.quorum_by] || "authors") + " list it");
    if (p.suspend_after_disputes !== null) rules.push(p.suspend_after_disputes + "+ disputes");
    if (p.require_review) rules.push("always: review required");
    if (p.spike_cap !== null) rules.push("quarantine at " + p.spike_cap + " matches a minute");
    if (p.spike_factor !== null) rules.push("quarantine at " + p.spike_factor + "x its usual rate");
    if (p.dispute_on_spike) rules.push("a quarantine disputes the hash to its author (match-spike)");
    row(pt, [{ text: p.collection }, { text: rules.join("; ") }]);
  }
  const held = status.quarantine || [];
  const qnone = document.getElementById("quarantine-none"); qnone.replaceChildren();
  if (!held.length) qnone.appendChild(el("p", "None: no signal is held back on a match spike.", "ok"));
  const qt = document.querySelector("#quarantine tbody"); qt.replaceChildren();
  for (const q of held) row(qt, [{ text: q.collection }, { text: q.type + " " + q.value.slice(0, 16) + "…", title: q.value, cls: "mono" }, { text: q.author_name || short(q.author), title: q.author }, { text: q.reason, cls: "bad" }, { text: ago(q.at) }, { text: q.op_id, cls: "mono" }]);
  const degenerate = status.degenerate_by_author || [];
  const dg = document.getElementById("degenerate"); dg.replaceChildren();
  if (degenerate.length) dg.appendChild(el("p", "Degenerate hashes other nodes sent (held back at ingest, never matched): " + degenerate.map(d => (d.name || short(d.author)) + " " + d.held_back).join(", "), "bad"));
  const disputed = status.disputed || [];
  const dnone = document.getElementById("disputes-none"); dnone.replaceChildren();
  if (!disputed.length) dnone.appendChild(el("p", "None: no author disputes a hash this node published.", "ok"));
  const dt = document.querySelector("#disputes tbody"); dt.replaceChildren();
  const names = l => l.map(w => (w.author_name || short(w.author)) + (w.reason ? " (" + w.reason + ")" : "")).join(", ");
  for (const d of disputed) row(dt, [{ text: d.collection || "" }, { text: d.type ? d.type + " " + d.value.slice(0, 16) + "…" : d.op_id, title: d.value || d.op_id, cls: "mono" }, { text: names(d.disputes), cls: "bad" }, { text: names(d.confirms) }, { text: d.live === false ? "revoked" : d.revoke + "  |  " + d.confirm, cls: "mono" }]);
  const authors = new Map();
  for (const t of status.trust || []) { const a = authors.get(t.node_id) || { name: t.name, collections: [] }; a.collections.push(t.collection); a.name = a.name || t.name; authors.set(t.node_id, a); }
  const trust = document.querySelector("#trust tbody"); trust.replaceChildren();
  for (const [id, a] of authors) row(trust, [{ text: id, cls: "mono" }, { text: a.name }, { text: a.collections.sort().join(", ") }]);
  if (status.trust_total > (status.trust || []).length) row(trust, [{ text: "… the first " + status.trust.length + " of " + status.trust_total + " entries (all of them: hashmesh trust list)", cls: "muted" }, { text: "" }, { text: "" }]);
  if (!logsPaged) {
    const logs = document.querySelector("#logs tbody"); logs.replaceChildren();
    for (const l of status.logs) logRow(logs, l);
    if (status.logs_next) logsMore(logs, status.logs_next, status.logs_total, status.logs.length);
  }
  const rec = document.querySelector("#recent tbody"); rec.replaceChildren();
  for (const c of recent.changes) row(rec, [{ text: String(c.cursor), cls: "num" }, { text: c.kind + (c.detail ? " (" + c.detail + ")" : "") }, { text: c.collection }, { text: c.type ? c.type + " " + c.value.slice(0, 16) + "…" : (c.target ? "on " + short(c.target) : ""), cls: "mono" }, { text: short(c.op_id), cls: "mono", title: c.op_id }, { text: ago(c.at) }]);
  chart(history.minutes);
}
// Logs come a page at a time (GET /v1/status/logs): thousands of them made the status
// megabytes long. Once the operator pages on, the 5 s refresh leaves the table alone.
let logsPaged = false;
function logRow(tbody, l) {
  row(tbody, [{ text: l.collection }, { text: l.author_name || short(l.author), title: l.author }, { text: String(l.head), cls: "num" }, { text: l.live.toLocaleString(), cls: "num" }, { text: String(l.pending), cls: "num" }, l.forked ? { text: "FORKED", cls: "bad" } : { text: "ok", cls: "ok" }]);
}
function logsMore(tbody, next, total, shown) {
  const tr = document.createElement("tr"), td = document.createElement("td");
  td.colSpan = 6;
  const button = el("button", "Show more logs (" + shown.toLocaleString() + " of " + total.toLocaleString() + " shown)");
  button.type = "button";
  button.id = "logs-more";
  button.addEventListener("click", async () => {
    logsPaged = true;
    button.disabled = true;
    try {
      const page = await get("/v1/status/logs?after=" + encodeURIComponent(next));
      tr.remove();
      for (const l of page.logs) logRow(tbody, l);
      if (page.next) logsMore(tbody, page.next, page.total, shown + page.logs.length);
    } catch (e) { button.disabled = false; button.textContent = "error: " + e.message + " (try again)"; }
  });
  td.appendChild(button); tr.appendChild(td); tbody.appendChild(tr);
}
function chart(minutes) {
  const svg = document.getElementById("chart"); svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg", W = 720, H = 200, P = 30;
  const now = Math.floor(Date.now() / 60000), slot = (W - 2 * P) / 60;
  const maxT = Math.max(1, ...minutes.map(m => Math.max(m.received, m.sent)));
  const maxD = Math.max(1, ...minutes.map(m => m.delay_mean_ms || 0));
  const add = (tag, attrs, text) => { const e = document.createElementNS(ns, tag); for (const k in attrs) e.setAttribute(k, attrs[k]); if (text) e.textContent = text; svg.appendChild(e); return e; };
  add("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#999" });
  add("text", { x: P, y: H - 8 }, "-60 min"); add("text", { x: W - P - 20, y: H - 8 }, "now");
  add("text", { x: 2, y: 14 }, maxT + " batches"); add("text", { x: W - 110, y: 14 }, Math.round(maxD) + " ms delay");
  const pts = [];
  for (const m of minutes) {
    const x = P + (59 - (now - m.minute)) * slot;
    const hr = (m.received / maxT) * (H - 2 * P), hs = (m.sent / maxT) * (H - 2 * P);
    add("rect", { x: x, y: H - P - hr, width: slot * 0.45, height: hr, fill: "#3b5b92" });
    add("rect", { x: x + slot * 0.45, y: H - P - hs, width: slot * 0.45, height: hs, fill: "#9db4d9" });
    if (m.delay_mean_ms !== null) {
      const cx = x + slot / 2, cy = H - P - (m.delay_mean_ms / maxD) * (H - 2 * P);
      pts.push(cx + "," + cy);
      add("circle", { cx: cx, cy: cy, r: 3, fill: "#b3261e" }).appendChild(document.createElementNS(ns, "title")).textContent = m.delay_mean_ms + " ms mean, " + m.delay_max_ms + " ms max";
    }
  }
  if (pts.length) add("polyline", { points: pts.join(" "), fill: "none", stroke: "#b3261e", "stroke-width": 2 });
}
// -- self-report (hashmesh/node/web/selfreport.py) --
function selfReports(r) {
  const box = document.getElementById("selfreport");
  box.hidden = !r.enabled;
  if (!r.enabled) return;
  document.getElementById("sr-path").textContent = r.path;
  document.getElementById("sr-collection").textContent = r.collection;
  document.getElementById("sr-cases").textContent = r.totals.cases;
  document.getElementById("sr-withdrawn").textContent = r.totals.withdrawn;
  document.getElementById("sr-hashes").textContent = r.totals.hashes;
  const o = r.opinions;
  document.getElementById("sr-opinions").textContent = "Platforms: " + o.hashes_seen + " hashes seen (" + o.seen + " reports), " + o.hashes_disputed + " disputed (" + o.disputes + " disputes), " + o.confirms + " confirmations.";
  const tbody = document.querySelector("#sr-days tbody"); tbody.replaceChildren();
  for (const d of r.days) row(tbody, [{ text: d.day }, { text: String(d.cases), cls: "num" }, { text: String(d.hashes), cls: "num" }, { text: String(d.withdrawn), cls: "num" }]);
}
// -- end self-report --
async function refresh() {
  try {
    const [status, history, recent] = await Promise.all([get("/v1/status"), get("/v1/status/history"), get("/v1/status/recent")]);
    document.getElementById("login").hidden = true;
    document.getElementById("content").hidden = false;
    render(status, history, recent);
    get("/v1/admin/selfreport").then(selfReports, () => {});  // self-report (hashmesh/node/web/selfreport.py)
  } catch (e) {
    if (e.message === "login") { document.getElementById("login").hidden = false; document.getElementById("content").hidden = true; }
    else document.getElementById("updated").textContent = "error: " + e.message;
  }
}
document.getElementById("login-form").addEventListener("submit", ev => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  refresh();
});
if (token()) refresh(); else document.getElementById("login").hidden = false;
setInterval(() => { if (sessionStorage.getItem(KEY)) refresh(); }, 5000);
