import { useEffect, useRef, useState } from 'preact/hooks';
import * as api from '../api.js';
import { useNow } from '../hooks.js';
import { age, podReady, podStatus, restarts } from '../format.js';

/** Keeps at most this much of a followed log on the page. */
const LOG_LIMIT = 256 * 1024;

function statusClass(s) {
  if (s === 'Running' || s === 'Completed' || s === 'Succeeded') return 'ok';
  if (s === 'Pending' || s === 'ContainerCreating' || s === 'Terminating') return 'wait';
  return 'bad';
}

function Logs({ pod }) {
  const containers = (pod.spec?.containers || []).map((c) => c.name);
  const [container, setContainer] = useState(containers[0]);
  const [text, setText] = useState('');
  const [state, setState] = useState('connecting');
  const box = useRef(null);
  const { namespace, name } = pod.metadata;
  const running = pod.status?.phase === 'Running' || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed';
  useEffect(() => {
    if (!running) {
      setState('waiting for the pod to start');
      return undefined;
    }
    const abort = new AbortController();
    setText('');
    setState('following');
    api
      .followLog(namespace, name, container, (piece) => setText((t) => (t + piece).slice(-LOG_LIMIT)), abort.signal)
      .then(() => setState('ended'))
      .catch((e) => !abort.signal.aborted && setState(`error: ${e.message}`));
    return () => abort.abort();
  }, [namespace, name, container, running]);
  useEffect(() => {
    if (box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [text]);
  return (
    <div class="logs">
      <div class="toolbar">
        <b>Logs</b>
        <select value={container} onChange={(e) => setContainer(e.target.value)} data-testid="log-container">
          {containers.map((c) => <option value={c}>{c}</option>)}
        </select>
        <span class="muted" data-testid="log-state">{state}</span>
      </div>
      <pre ref={box} data-testid="log">{text}</pre>
    </div>
  );
}

function Events({ events, obj }) {
  const mine = events
    .filter(
      (e) =>
        e.involvedObject?.name === obj.metadata.name &&
        e.involvedObject?.namespace === obj.metadata.namespace &&
        (e.involvedObject?.uid ? e.involvedObject.uid === obj.metadata.uid : true),
    )
    .sort((a, b) => Date.parse(a.lastTimestamp || a.eventTime || 0) - Date.parse(b.lastTimestamp || b.eventTime || 0));
  return (
    <table class="events" data-testid="events">
      <thead><tr><th>Type</th><th>Reason</th><th>Age</th><th>From</th><th>Message</th></tr></thead>
      <tbody>
        {mine.map((e) => (
          <tr class={e.type === 'Warning' ? 'bad' : ''}>
            <td>{e.type}</td>
            <td>{e.reason}</td>
            <td>{age(e.lastTimestamp || e.eventTime)}{e.count > 1 ? ` (×${e.count})` : ''}</td>
            <td>{e.source?.component || e.reportingComponent}</td>
            <td>{e.message}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function PodDetail({ pod, events }) {
  return (
    <div class="detail" data-testid="pod-detail">
      <h3>{pod.metadata.namespace}/{pod.metadata.name}</h3>
      <p class="muted">
        node {pod.spec?.nodeName || '(unscheduled)'} · IP {pod.status?.podIP || '–'} · {podStatus(pod)}
      </p>
      <table>
        <thead><tr><th>Container</th><th>Image</th><th>State</th><th>Ready</th><th>Restarts</th></tr></thead>
        <tbody>
          {(pod.spec?.containers || []).map((c) => {
            const s = (pod.status?.containerStatuses || []).find((x) => x.name === c.name) || {};
            const state = Object.keys(s.state || {})[0] || 'waiting';
            const why = s.state?.[state]?.reason;
            return (
              <tr>
                <td>{c.name}</td><td>{c.image}</td><td>{state}{why ? ` (${why})` : ''}</td>
                <td>{s.ready ? 'yes' : 'no'}</td><td>{s.restartCount || 0}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <Logs pod={pod} key={pod.metadata.uid} />
      <h4>Events</h4>
      <Events events={events} obj={pod} />
    </div>
  );
}

export function Pods({ data, inNamespace, navigate, rest }) {
  const now = useNow();
  const pods = inNamespace(data.pods);
  const byNamespace = {};
  for (const p of pods) (byNamespace[p.metadata.namespace] ||= []).push(p);
  const [selNs, selName] = rest;
  const selected = data.pods.find((p) => p.metadata.namespace === selNs && p.metadata.name === selName);
  return (
    <section class="split">
      <div>
        <h2>Pods</h2>
        {Object.keys(byNamespace).sort().map((ns) => (
          <div>
            <h3 class="ns-title">{ns}</h3>
            <table data-testid={`pods-${ns}`}>
              <thead><tr><th>Name</th><th>Ready</th><th>Status</th><th>Restarts</th><th>Node</th><th>IP</th><th>Age</th></tr></thead>
              <tbody>
                {byNamespace[ns]
                  .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
                  .map((p) => {
                    const s = podStatus(p);
                    return (
                      <tr
                        data-testid={`pod-${p.metadata.name}`}
                        class={p === selected ? 'selected' : ''}
                        onClick={() => navigate(`pods/${ns}/${p.metadata.name}`)}
                      >
                        <td><a href={`#pods/${ns}/${p.metadata.name}`}>{p.metadata.name}</a></td>
                        <td>{podReady(p)}</td>
                        <td class={statusClass(s)} data-testid="status">{s}</td>
                        <td>{restarts(p)}</td>
                        <td>{p.spec?.nodeName}</td>
                        <td>{p.status?.podIP}</td>
                        <td>{age(p.metadata.creationTimestamp, now)}</td>
                      </tr>
                    );
                  })}
              </tbody>
            </table>
          </div>
        ))}
      </div>
      {selected && <PodDetail pod={selected} events={data.events} />}
    </section>
  );
}

export { Events };
