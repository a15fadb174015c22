import { useState } from 'preact/hooks';
import * as api from '../api.js';
import { useNow } from '../hooks.js';
import { age } from '../format.js';
import { Events } from './pods.jsx';

const REVISION = 'deployment.kubernetes.io/revision';

function ScaleControl({ deployment }) {
  const { namespace, name } = deployment.metadata;
  const [value, setValue] = useState(null);
  const [problem, setProblem] = useState(null);
  const shown = value ?? String(deployment.spec?.replicas ?? 1);
  const scale = async () => {
    setProblem(null);
    try {
      await api.mergePatch(`/apis/apps/v1/namespaces/${namespace}/deployments/${name}/scale`, {
        spec: { replicas: Number(shown) },
      });
      setValue(null);
    } catch (e) {
      setProblem(e.message);
    }
  };
  return (
    <span class="scale">
      <input
        type="number"
        min="0"
        data-testid={`replicas-${name}`}
        value={shown}
        onInput={(e) => setValue(e.target.value)}
      />
      <button data-testid={`scale-${name}`} onClick={scale}>Scale</button>
      {problem && <span class="error">{problem}</span>}
    </span>
  );
}

function History({ deployment, replicasets }) {
  const owned = replicasets
    .filter((rs) => (rs.metadata.ownerReferences || []).some((o) => o.uid === deployment.metadata.uid))
    .sort((a, b) => Number(b.metadata.annotations?.[REVISION] || 0) - Number(a.metadata.annotations?.[REVISION] || 0));
  return (
    <table class="history" data-testid={`history-${deployment.metadata.name}`}>
      <thead><tr><th>Revision</th><th>ReplicaSet</th><th>Pods</th><th>Images</th><th>Age</th></tr></thead>
      <tbody>
        {owned.map((rs) => (
          <tr>
            <td>{rs.metadata.annotations?.[REVISION]}</td>
            <td>{rs.metadata.name}</td>
            <td>{rs.status?.readyReplicas || 0}/{rs.spec?.replicas ?? 0}</td>
            <td>{(rs.spec?.template?.spec?.containers || []).map((c) => c.image).join(', ')}</td>
            <td>{age(rs.metadata.creationTimestamp)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Deployments({ data, inNamespace }) {
  const now = useNow();
  const [open, setOpen] = useState(null);
  const deployments = inNamespace(data.deployments).sort((a, b) =>
    `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`),
  );
  return (
    <section>
      <h2>Deployments</h2>
      <table data-testid="deployments">
        <thead>
          <tr><th>Namespace</th><th>Name</th><th>Ready</th><th>Up-to-date</th><th>Available</th><th>Images</th><th>Age</th><th>Replicas</th></tr>
        </thead>
        <tbody>
          {deployments.map((d) => {
            const key = d.metadata.uid;
            const st = d.status || {};
            return [
              <tr data-testid={`deployment-${d.metadata.name}`}>
                <td>{d.metadata.namespace}</td>
                <td>
                  <a href="javascript:void 0" onClick={() => setOpen(open === key ? null : key)}>{d.metadata.name}</a>
                </td>
                <td data-testid="ready">{st.readyReplicas || 0}/{d.spec?.replicas ?? 1}</td>
                <td>{st.updatedReplicas || 0}</td>
                <td>{st.availableReplicas || 0}</td>
                <td>{(d.spec?.template?.spec?.containers || []).map((c) => c.image).join(', ')}</td>
                <td>{age(d.metadata.creationTimestamp, now)}</td>
                <td><ScaleControl deployment={d} /></td>
              </tr>,
              open === key && (
                <tr class="expanded">
                  <td colspan="8">
                    <h4>Rollout history</h4>
                    <History deployment={d} replicasets={data.replicasets} />
                    <h4>Events</h4>
                    <Events events={data.events} obj={d} />
                  </td>
                </tr>
              ),
            ];
          })}
        </tbody>
      </table>
    </section>
  );
}
