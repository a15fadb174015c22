// Kubernetes quantities and times, as kubectl prints them.

const BINARY = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };
const DECIMAL = { n: 1e-9, u: 1e-6, m: 1e-3, '': 1, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18 };

/** A quantity ("250m", "128Mi", "1.5", "2e3") as a number of base units. */
export function quantity(q) {
  if (q === undefined || q === null) return 0;
  const m = String(q).trim().match(/^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$/);
  if (!m) return 0;
  const n = parseFloat(m[1]);
  const suffix = m[2];
  if (suffix in BINARY) return n * BINARY[suffix];
  if (suffix in DECIMAL) return n * DECIMAL[suffix];
  return 0;
}

export function cores(n) {
  if (n < 1) return `${Math.round(n * 1000)}m`;
  return `${n.toFixed(2)}`;
}

export function bytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)}Gi`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)}Mi`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(0)}Ki`;
  return `${n}`;
}

/** kubectl's age: 45s, 3m, 2h, 4d. */
export function age(timestamp, now = Date.now()) {
  if (!timestamp) return '';
  const s = Math.max(0, Math.floor((now - Date.parse(timestamp)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** The STATUS column of `kubectl get pods`. */
export function podStatus(pod) {
  if (pod.metadata.deletionTimestamp) return 'Terminating';
  const st = pod.status || {};
  let reason = st.reason || st.phase || 'Pending';
  for (const c of st.containerStatuses || []) {
    const s = c.state || {};
    if (s.waiting?.reason) reason = s.waiting.reason;
    else if (s.terminated?.reason && reason !== 'Running') reason = s.terminated.reason;
  }
  return reason;
}

export function podReady(pod) {
  const statuses = pod.status?.containerStatuses || [];
  const total = pod.spec?.containers?.length || statuses.length;
  return `${statuses.filter((c) => c.ready).length}/${total}`;
}

export function restarts(pod) {
  return (pod.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0);
}

/** CPU and memory requested by a pod's containers (finished pods request nothing). */
export function podRequests(pod) {
  const phase = pod.status?.phase;
  if (phase === 'Succeeded' || phase === 'Failed') return { cpu: 0, memory: 0 };
  let cpu = 0;
  let memory = 0;
  for (const c of pod.spec?.containers || []) {
    cpu += quantity(c.resources?.requests?.cpu);
    memory += quantity(c.resources?.requests?.memory);
  }
  return { cpu, memory };
}
