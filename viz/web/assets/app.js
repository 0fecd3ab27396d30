// tcp-upper-lab web: the page. Everything comes from /events (server-sent
// events); a connection's ladder and graphs from /conn.
"use strict";
const $ = (id) => document.getElementById(id);
const MAX_EVENT_ROWS = 500;
const MAX_ROWS_PER_FRAME = 100;
let selected = null;      // {local, remote}
let detailTimer = null;
let canControl = false;

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function ms(ns) { return (ns / 1e6).toFixed(ns < 1e7 ? 3 : 0); }

function setStatus(s) {
  const el = $("status");
  el.className = s.up ? "up" : "down";
  el.textContent = s.up ? "connected: " + s.server : "not connected: " + (s.error || "") + " (since " + s.since + ")";
}

function renderSS(socks) {
  const rows = [];
  for (const so of socks || []) {
    const i = so.info;
    const timer = so.time_wait_left ? "timewait," + Math.ceil(so.time_wait_left / 1e9) + "sec" : "";
    rows.push("<tr data-local=\"" + esc(so.local) + "\" data-remote=\"" + esc(so.remote) + "\"" +
      (selected && selected.local === so.local && selected.remote === so.remote ? " class=\"sel\"" : "") + ">" +
      "<td class=\"state\">" + esc(so.state) + "</td><td>" + so.recv_q + "</td><td>" + so.send_q + "</td><td>" + esc(so.local) + "</td><td>" + esc(so.remote) + "</td>" +
      (i ? "<td>" + ms(i.rto) + "</td><td>" + ms(i.rtt) + "/" + ms(i.rttvar) + "</td><td>" + i.mss + "</td><td>" + i.cwnd + "</td><td>" + (i.ssthresh > 0 && i.ssthresh < 2147483647 ? i.ssthresh : "") +
        "</td><td>" + i.bytes_sent + "</td><td>" + i.bytes_acked + "</td><td>" + i.bytes_received + "</td><td>" + i.segs_out + "</td><td>" + i.segs_in + "</td><td>" + i.retrans + "</td>"
        : "<td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td>") +
      "<td>" + timer + "</td></tr>");
  }
  $("conns").tBodies[0].innerHTML = rows.join("");
  $("conncount").textContent = (socks || []).length + " sockets";
}

function eventRow(ev) {
  const what = ev.kind === "state" ? ev.from + " → " + ev.to : ev.kind;
  const nums = ev.cwnd === null || ev.cwnd === undefined ? "" :
    "snd.una=" + ev.snd_una + " snd.nxt=" + ev.snd_nxt + " rcv.nxt=" + ev.rcv_nxt + " cwnd=" + ev.cwnd +
    " srtt=" + (ev.srtt_ms === null ? "-" : ev.srtt_ms.toFixed(3) + "ms") +
    " rttvar=" + (ev.rttvar_ms === null || ev.rttvar_ms === undefined ? "-" : ev.rttvar_ms.toFixed(3) + "ms") + " rto=" + (ev.rto_ms === null ? "-" : ev.rto_ms + "ms");
  return "<tr class=\"ev-" + esc(ev.kind) + "\"><td>" + esc(ev.time.slice(11, 26)) + "</td><td>" + esc(ev.remote) + "</td><td class=\"what\">" + esc(what) +
    "</td><td>" + esc(ev.cause || "") + "</td><td><code>" + esc(nums) + "</code></td></tr>";
}

// What became of the stack's events on their way to this page (tests read
// window.eventCounts; the page shows it in #eventcount):
//   received  the events this page was sent;
//   notDrawn  received, but more came in one frame than are drawn
//             (MAX_ROWS_PER_FRAME, state changes always are): never drawn;
//   dropped   the events the web view dropped for this page (its queue was
//             full: this page read too slowly);
//   upstream  the events and segment events (the ladder's arrows) the
//             server's control socket dropped for the web view (it read
//             too slowly), summed over the server's restarts: the server
//             counts both kinds as one.
const eventCounts = {received: 0, notDrawn: 0, dropped: 0, upstream: 0};
window.eventCounts = eventCounts;

// Events are drawn once a frame, newest first: at thousands a second a
// row each as they come would keep the browser from drawing anything else.
let pendingEvents = [];
let frameAsked = false;

function addEvent(ev) {
  eventCounts.received++;
  if (selected && ev.local === selected.local && ev.remote === selected.remote) scheduleDetail();
  pendingEvents.push(ev);
  if (pendingEvents.length >= 4 * MAX_EVENT_ROWS) {
    // No frame for a while (a hidden tab): keep what the table can hold,
    // and as many of the state changes before it.
    const old = pendingEvents.length - MAX_EVENT_ROWS;
    const keep = pendingEvents.slice(0, old).filter((e) => e.kind === "state").slice(-MAX_EVENT_ROWS);
    eventCounts.notDrawn += old - keep.length;
    pendingEvents = keep.concat(pendingEvents.slice(old));
  }
  if (!frameAsked) { frameAsked = true; requestAnimationFrame(drawEvents); }
}

function drawEvents() {
  frameAsked = false;
  const evs = pendingEvents;
  pendingEvents = [];
  // The newest MAX_ROWS_PER_FRAME, and every state change: those are few
  // and what one watches for. More rows than that a frame nobody reads,
  // and drawing them takes the CPU the server shares.
  const rows = [];
  for (let i = evs.length - 1; i >= 0; i--) {
    if (rows.length < MAX_ROWS_PER_FRAME || evs[i].kind === "state") rows.push(eventRow(evs[i]));
  }
  eventCounts.notDrawn += evs.length - rows.length;
  const body = $("events").tBodies[0];
  body.insertAdjacentHTML("afterbegin", rows.join(""));
  while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(body.rows.length - 1);
  renderCounts();
}

function renderCounts() {
  const c = eventCounts;
  $("eventcount").textContent = c.received + " events received, " + c.notDrawn + " not drawn (more than " + MAX_ROWS_PER_FRAME + " in a frame), " +
    c.dropped + " dropped by the web view for this page; " + c.upstream + " events and segments dropped by the server for the web view";
  const why = [];
  if (c.dropped || droppedOther) {
    why.push(c.dropped + " events" + (droppedOther ? " and " + droppedOther + " other updates" : "") + " dropped on the way to this page: this page read too slowly");
  }
  if (c.upstream) why.push(c.upstream + " events and segments dropped by the server: the web view read the server too slowly");
  const el = $("dropped");
  el.hidden = why.length === 0;
  el.textContent = why.join("; ");
}
let droppedOther = 0;

function renderStats(st) {
  const rows = [];
  for (const c of st.counters || []) rows.push("<tr><td>" + esc(c.name) + "</td><td>" + c.value + "</td></tr>");
  if (st.lost_upstream) rows.push("<tr><td>events and segments the server dropped for this view</td><td>" + st.lost_upstream + "</td></tr>");
  $("counters").tBodies[0].innerHTML = rows.join("");
  if ((st.lost_upstream || 0) !== eventCounts.upstream) { eventCounts.upstream = st.lost_upstream || 0; renderCounts(); }
}

function renderFaults(f) {
  const items = (f.rules || []).map((r) => "<li>#" + r.id + " <code>" + esc(r.rule) + "</code>: matched " + r.matched + ", applied " + r.applied + "</li>");
  $("faults").innerHTML = items.length ? items.join("") : "<li>none</li>";
}

function scheduleDetail() {
  if (detailTimer) return;
  detailTimer = setTimeout(() => { detailTimer = null; loadDetail(); }, 300);
}

async function loadDetail() {
  if (!selected) return;
  $("detail").hidden = false;
  $("detailname").textContent = selected.remote + " → " + selected.local;
  const r = await fetch("/conn?local=" + encodeURIComponent(selected.local) + "&remote=" + encodeURIComponent(selected.remote));
  if (!r.ok) { $("ladder").textContent = await r.text(); $("graphs").innerHTML = ""; return; }
  const d = await r.json();
  $("ladder").innerHTML = d.ladder;
  const lack = [];
  if (d.segments_not_kept) lack.push("The ladder stops at its first segments: " + d.segments_not_kept + " later ones were not kept.");
  if (d.events_not_kept) lack.push("The ladder and graphs stop at the stack's first events: " + d.events_not_kept + " later ones were not kept.");
  $("ladderlack").hidden = lack.length === 0;
  $("ladderlack").textContent = lack.join(" ");
  $("graphs").innerHTML = ["cwnd", "rtt", "inflight"].filter((k) => d.graphs[k]).map((k) => "<div class=\"graph\" id=\"graph-" + k + "\">" + d.graphs[k] + "</div>").join("");
}

$("conns").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-local]");
  if (!tr) return;
  selected = {local: tr.dataset.local, remote: tr.dataset.remote};
  for (const r of $("conns").tBodies[0].rows) r.classList.toggle("sel", r === tr);
  loadDetail();
});

async function changeFaults(body) {
  const r = await fetch("/fault", {method: "POST", headers: {"Content-Type": "application/json", "X-Token": $("token").value}, body: JSON.stringify(body)});
  $("faultmsg").textContent = r.ok ? "done" : r.status + ": " + (await r.text());
}
$("faultform").addEventListener("submit", (e) => { e.preventDefault(); changeFaults({op: "add", rule: $("faultrule").value}); });
$("faultclear").addEventListener("click", () => changeFaults({op: "clear"}));

function connect() {
  const es = new EventSource("/events");
  es.addEventListener("status", (m) => setStatus(JSON.parse(m.data)));
  // The web view counts a page's drops from its connection: after a
  // reconnection they add to those before.
  let droppedBase = 0, otherBase = 0;
  es.addEventListener("hello", (m) => {
    canControl = JSON.parse(m.data).control; $("faultform").hidden = !canControl;
    droppedBase = eventCounts.dropped; otherBase = droppedOther;
  });
  // Draw the table once a frame at most, with the latest one.
  let pendingSS = null;
  es.addEventListener("ss", (m) => {
    const first = pendingSS === null;
    pendingSS = m.data;
    if (first) requestAnimationFrame(() => { const d = pendingSS; pendingSS = null; renderSS(JSON.parse(d)); });
    // The table comes every second: so do the selected ladder's new arrows
    // (segments are not sent to the page one by one).
    if (selected) scheduleDetail();
  });
  es.addEventListener("stats", (m) => renderStats(JSON.parse(m.data)));
  es.addEventListener("faults", (m) => renderFaults(JSON.parse(m.data)));
  // The stack's events come a batch a message (the web view gathers them
  // for BatchEvery, 50 ms).
  es.addEventListener("events", (m) => { for (const ev of JSON.parse(m.data)) addEvent(ev); });
  es.addEventListener("dropped", (m) => {
    const d = JSON.parse(m.data);
    eventCounts.dropped = droppedBase + d.events;
    droppedOther = otherBase + d.other;
    renderCounts();
  });
  es.onerror = () => {
    // EventSource retries by itself; say so meanwhile.
    setStatus({up: false, error: "lost the web view's server; reconnecting", since: new Date().toISOString()});
  };
}
connect();
