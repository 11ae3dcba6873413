/**
 * Prometheus text exposition (format 0.0.4) of the reported state and the
 * agent's counters. Hand-written: the format is a few lines of rules, and a
 * client library would cost more memory on a small device than it saves.
 */
import type { AgentMetrics, ReportedState, ServiceReport } from "../../schemas/reported.js";
import { PHASES, serviceReport } from "../../schemas/reported.js";

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type MetricType = "gauge" | "counter" | "histogram";
type Labels = Record<string, string>;

interface Sample {
  /** Suffix appended to the family name: "", "_bucket", "_sum" or "_count". */
  suffix?: string;
  labels?: Labels;
  value: number;
}

interface Family {
  name: string;
  help: string;
  type: MetricType;
  samples: Sample[];
}

/** Upper bounds, in seconds, of the apply-duration histogram: from a restart to a slow pull. */
const APPLY_BUCKETS_SEC = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

const SERVICE_STATES = serviceReport.shape.state.options;
const HEALTH_STATES = serviceReport.shape.health.options;

/** Label values may hold anything; the format reserves backslash, double quote and newline. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** HELP text escapes only backslash and newline. */
function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Number.POSITIVE_INFINITY) return "+Inf";
  if (value === Number.NEGATIVE_INFINITY) return "-Inf";
  return String(value);
}

function formatLabels(labels: Labels | undefined): string {
  const pairs = Object.entries(labels ?? {}).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`);
  return pairs.length === 0 ? "" : `{${pairs.join(",")}}`;
}

function renderFamily(f: Family): string {
  const lines = [`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`];
  for (const s of f.samples) lines.push(`${f.name}${s.suffix ?? ""}${formatLabels(s.labels)} ${formatValue(s.value)}`);
  return lines.join("\n");
}

/** One sample per possible value, 1 for the current one: the usual Prometheus "state set". */
function stateSet(labels: Labels, key: string, options: readonly string[], current: string): Sample[] {
  return options.map((option) => ({ labels: { ...labels, [key]: option }, value: option === current ? 1 : 0 }));
}

function perService(services: [string, ServiceReport][], pick: (name: string, s: ServiceReport) => Sample[]): Sample[] {
  return services.flatMap(([name, s]) => pick(name, s));
}

function serviceFamilies(state: ReportedState): Family[] {
  // Code-unit order: localeCompare would make the agent load ICU's collation data (~2 MB resident) for it.
  const services = Object.entries(state.services).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return [
    {
      name: "fleetlet_service_state",
      help: "Current state of each service (1 for the state it is in, 0 for the others).",
      type: "gauge",
      samples: perService(services, (name, s) => stateSet({ service: name }, "state", SERVICE_STATES, s.state)),
    },
    {
      name: "fleetlet_service_health",
      help: "Health check result of each service (1 for the current result, 0 for the others).",
      type: "gauge",
      samples: perService(services, (name, s) => stateSet({ service: name }, "health", HEALTH_STATES, s.health)),
    },
    {
      name: "fleetlet_service_restarts_total",
      help: "Times the agent restarted each service's container.",
      type: "counter",
      samples: perService(services, (name, s) => [{ labels: { service: name }, value: s.restarts }]),
    },
    {
      name: "fleetlet_service_memory_bytes",
      help: "Memory charged to each service's cgroup, in bytes.",
      type: "gauge",
      samples: perService(services, (name, s) => [{ labels: { service: name }, value: s.memoryBytes }]),
    },
    {
      name: "fleetlet_service_cpu_seconds_total",
      help: "CPU time used by each service's cgroup, in seconds.",
      type: "counter",
      samples: perService(services, (name, s) => [{ labels: { service: name }, value: s.cpuSeconds }]),
    },
  ];
}

/** Cumulative buckets, then _sum and _count, as the histogram type requires. */
function histogramSamples(valuesSec: number[], bounds: number[]): Sample[] {
  const buckets = bounds.map((le) => ({
    suffix: "_bucket",
    labels: { le: String(le) },
    value: valuesSec.filter((v) => v <= le).length,
  }));
  return [
    ...buckets,
    { suffix: "_bucket", labels: { le: "+Inf" }, value: valuesSec.length },
    { suffix: "_sum", value: valuesSec.reduce((a, b) => a + b, 0) },
    { suffix: "_count", value: valuesSec.length },
  ];
}

function agentFamilies(state: ReportedState, m: AgentMetrics): Family[] {
  const info = { version: state.agent.version, device: state.deviceId, cgroup_mode: state.agent.cgroupMode };
  return [
    {
      name: "fleetlet_info",
      help: "Agent version, device id and cgroup mode; always 1.",
      type: "gauge",
      samples: [{ labels: info, value: 1 }],
    },
    {
      name: "fleetlet_phase",
      help: "Phase of the current deployment (1 for the current phase, 0 for the others).",
      type: "gauge",
      samples: stateSet({}, "phase", PHASES, state.phase),
    },
    {
      name: "fleetlet_agent_uptime_seconds",
      help: "Seconds since the agent started.",
      type: "gauge",
      samples: [{ value: state.agent.uptimeSec }],
    },
    {
      name: "fleetlet_pull_bytes_total",
      help: "Bytes of image blobs downloaded.",
      type: "counter",
      samples: [{ value: m.pullBytesTotal }],
    },
    {
      name: "fleetlet_apply_duration_seconds",
      help: "Time taken to apply a desired state, from receipt to converged or failed.",
      type: "histogram",
      samples: histogramSamples(
        m.applyDurationsMs.map((ms) => ms / 1000),
        APPLY_BUCKETS_SEC,
      ),
    },
    {
      name: "fleetlet_applies_total",
      help: "Desired states the agent applied.",
      type: "counter",
      samples: [{ value: m.appliesTotal }],
    },
    {
      name: "fleetlet_rollbacks_total",
      help: "Deployments rolled back to the last good one.",
      type: "counter",
      samples: [{ value: m.rollbacksTotal }],
    },
  ];
}

/** The whole /metrics body, ending with a newline as the format requires. */
export function renderMetrics(state: ReportedState, metrics: AgentMetrics): string {
  const families = [...agentFamilies(state, metrics), ...serviceFamilies(state)];
  return `${families.map(renderFamily).join("\n")}\n`;
}
