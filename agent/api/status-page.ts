/**
 * The small human status page served at `/`. The server renders the whole
 * page, so it reads without JavaScript; a tiny inline script then fetches
 * /v1/status every 2 s and redraws it. No external assets: devices are often
 * offline, and the page must work from `curl --unix-socket` plus a browser.
 */
import { createHash } from "node:crypto";
import type { ReportedState, ServiceReport } from "../../schemas/reported.js";

const REFRESH_MS = 2000;

const STYLE = `body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-top:1em}th,td{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}dt{font-weight:600;float:left;clear:left;width:9em}dd{margin:0 0 .2em 9em}
#stale{color:#b60}`;

/*
 * The browser-side renderer. It must produce the same cells as serviceCells()
 * below (the chromium test compares them); it builds nodes with textContent
 * only, so nothing from the status can become markup.
 */
const SCRIPT = `(function(){
function mib(b){return (b/1048576).toFixed(1)+" MiB"}
function cells(n,s){return [n,s.state,s.health,String(s.restarts),mib(s.memoryBytes),s.cpuSeconds.toFixed(2)+" s"]}
function text(id,v){document.getElementById(id).textContent=v}
function draw(r){
text("device",r.deviceId);text("deployment",r.deployment===null?"none":r.deployment);
text("generation",r.generation===null?"none":String(r.generation));text("phase",r.phase);
text("lastError",r.lastError===null?"none":r.lastError.code+": "+r.lastError.message);text("ts",r.ts);
var body=document.getElementById("services");body.replaceChildren();
Object.keys(r.services).sort().forEach(function(n){var tr=document.createElement("tr");
cells(n,r.services[n]).forEach(function(c,i){var td=document.createElement("td");td.textContent=c;if(i>2)td.className="num";tr.appendChild(td)});
body.appendChild(tr)});
document.documentElement.setAttribute("data-refreshed",r.ts);text("stale","")}
function refresh(){fetch("/v1/status",{cache:"no-store"}).then(function(res){
if(!res.ok)throw new Error("HTTP "+res.status);return res.json()}).then(draw,function(e){text("stale","status unavailable: "+e.message)})}
setInterval(refresh,${REFRESH_MS});})();`;

function cspHash(source: string): string {
  return `'sha256-${createHash("sha256").update(source).digest("base64")}'`;
}

/**
 * Only the inline script and style above may run, and the script may only
 * talk back to this server: the page shows data from containers' names and
 * error messages, so a markup slip must not turn into script execution.
 */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src ${cspHash(SCRIPT)}`,
  `style-src ${cspHash(STYLE)}`,
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");

const ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]!);
}

/** The visible cells of one service row: name, state, health, restarts, memory, CPU. */
export function serviceCells(name: string, s: ServiceReport): string[] {
  return [
    name,
    s.state,
    s.health,
    String(s.restarts),
    `${(s.memoryBytes / 1048576).toFixed(1)} MiB`,
    `${s.cpuSeconds.toFixed(2)} s`,
  ];
}

function serviceRow(name: string, s: ServiceReport): string {
  const tds = serviceCells(name, s).map((c, i) => `<td${i > 2 ? ' class="num"' : ""}>${escapeHtml(c)}</td>`);
  return `<tr>${tds.join("")}</tr>`;
}

function field(id: string, label: string, value: string): string {
  return `<dt>${label}</dt><dd id="${id}">${escapeHtml(value)}</dd>`;
}

function summary(r: ReportedState): string {
  const lastError = r.lastError === null ? "none" : `${r.lastError.code}: ${r.lastError.message}`;
  return [
    field("device", "Device", r.deviceId),
    field("deployment", "Deployment", r.deployment ?? "none"),
    field("generation", "Generation", r.generation === null ? "none" : String(r.generation)),
    field("phase", "Phase", r.phase),
    field("lastError", "Last error", lastError),
    field("ts", "Reported at", r.ts),
  ].join("\n");
}

/** The whole page for this reported state. */
export function renderStatusPage(r: ReportedState): string {
  const rows = Object.keys(r.services)
    .sort()
    .map((name) => serviceRow(name, r.services[name]!));
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>fleetlet ${escapeHtml(r.deviceId)}</title><style>${STYLE}</style></head>
<body><h1>fleetlet on ${escapeHtml(r.deviceId)}</h1>
<p>agent ${escapeHtml(r.agent.version)}, cgroup ${escapeHtml(r.agent.cgroupMode)} <span id="stale"></span></p>
<dl>
${summary(r)}
</dl>
<table><thead><tr><th>Service</th><th>State</th><th>Health</th><th>Restarts</th><th>Memory</th><th>CPU</th></tr></thead>
<tbody id="services">${rows.join("\n")}</tbody></table>
<script>${SCRIPT}</script>
</body></html>
`;
}
