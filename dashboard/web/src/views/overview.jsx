import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import * as api from '../api.js';
import { bytes, cores, podRequests, quantity } from '../format.js';

/** How often usage is sampled: the metrics API's window (it has no watch). */
const SAMPLE_MS = 10_000;
/** Samples kept: one hour. */
const KEEP = 360;

function nodeReady(node) {
  return (node.status?.conditions || []).find((c) => c.type === 'Ready')?.status === 'True';
}

/** The cluster's usage (metrics.k8s.io) and requests (from the pods watch) over time, sampled
 * while the dashboard is open (kept across views). */
export function useSeries(pods) {
  const [series, setSeries] = useState({ t: [], cpu: [], cpuReq: [], mem: [], memReq: [] });
  const [usage, setUsage] = useState({});
  const latest = useRef({ pods });
  latest.current = { pods };
  useEffect(() => {
    const abort = new AbortController();
    const sample = async () => {
      let metrics = null;
      try {
        metrics = await api.get('/apis/metrics.k8s.io/v1beta1/nodes', abort.signal);
      } catch {
        // No metrics yet: requests and allocatable still chart.
      }
      const { pods } = latest.current;
      const byNode = {};
      for (const m of metrics?.items || []) {
        byNode[m.metadata.name] = { cpu: quantity(m.usage?.cpu), memory: quantity(m.usage?.memory) };
      }
      setUsage(byNode);
      const req = pods.reduce(
        (a, p) => {
          const r = podRequests(p);
          return { cpu: a.cpu + r.cpu, memory: a.memory + r.memory };
        },
        { cpu: 0, memory: 0 },
      );
      const used = Object.values(byNode).reduce(
        (a, u) => ({ cpu: a.cpu + u.cpu, memory: a.memory + u.memory }),
        { cpu: 0, memory: 0 },
      );
      setSeries((s) => {
        const push = (arr, v) => [...arr, v].slice(-KEEP);
        return {
          t: push(s.t, Date.now() / 1000),
          cpu: push(s.cpu, metrics ? used.cpu : null),
          cpuReq: push(s.cpuReq, req.cpu),
          mem: push(s.mem, metrics ? used.memory / 2 ** 20 : null),
          memReq: push(s.memReq, req.memory / 2 ** 20),
        };
      });
    };
    sample();
    const timer = setInterval(sample, SAMPLE_MS);
    return () => {
      abort.abort();
      clearInterval(timer);
    };
  }, []);
  return [series, usage];
}

function Chart({ title, unit, data, labels, testid }) {
  const el = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const opts = {
      title,
      width: 520,
      height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: unit }],
      series: [
        {},
        { label: labels[0], stroke: '#2563eb', width: 2, fill: 'rgba(37,99,235,0.12)' },
        { label: labels[1], stroke: '#d97706', width: 2 },
      ],
    };
    plot.current = new uPlot(opts, data, el.current);
    return () => plot.current.destroy();
  }, []);
  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);
  return <div class="chart" data-testid={testid} ref={el} />;
}

export function Overview({ data, series, usage }) {
  const { nodes, pods } = data;
  const podsOn = (name) =>
    pods.filter((p) => p.spec?.nodeName === name && !['Succeeded', 'Failed'].includes(p.status?.phase)).length;
  const running = pods.filter((p) => p.status?.phase === 'Running').length;
  return (
    <section>
      <h2>Cluster</h2>
      <div class="cards">
        <div class="card"><b>{nodes.length}</b> nodes</div>
        <div class="card"><b data-testid="running-pods">{running}</b> pods running</div>
        <div class="card"><b>{data.deployments.length}</b> deployments</div>
        <div class="card"><b>{data.services.length}</b> services</div>
      </div>
      <div class="charts">
        <Chart
          title="CPU (cores)"
          unit="cores"
          testid="chart-cpu"
          labels={['usage', 'requests']}
          data={[series.t, series.cpu, series.cpuReq]}
        />
        <Chart
          title="Memory (MiB)"
          unit="MiB"
          testid="chart-memory"
          labels={['usage', 'requests']}
          data={[series.t, series.mem, series.memReq]}
        />
      </div>
      <h2>Nodes</h2>
      <table data-testid="nodes">
        <thead>
          <tr><th>Name</th><th>Status</th><th>CPU used / allocatable</th><th>Memory used / allocatable</th><th>Pods</th><th>Runtime</th></tr>
        </thead>
        <tbody>
          {nodes.map((n) => {
            const u = usage[n.metadata.name];
            const a = n.status?.allocatable || {};
            return (
              <tr>
                <td>{n.metadata.name}{n.spec?.unschedulable && <span class="tag">cordoned</span>}</td>
                <td class={nodeReady(n) ? 'ok' : 'bad'}>{nodeReady(n) ? 'Ready' : 'NotReady'}</td>
                <td>{u ? cores(u.cpu) : '–'} / {cores(quantity(a.cpu))}</td>
                <td>{u ? bytes(u.memory) : '–'} / {bytes(quantity(a.memory))}</td>
                <td>{podsOn(n.metadata.name)} / {a.pods}</td>
                <td>{n.status?.nodeInfo?.containerRuntimeVersion}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </section>
  );
}
