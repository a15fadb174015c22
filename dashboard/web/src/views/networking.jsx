function ports(svc) {
  return (svc.spec?.ports || [])
    .map((p) => `${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol || 'TCP'}`)
    .join(', ');
}

/** The ready endpoints of a Service, from its EndpointSlices. */
function endpoints(svc, slices) {
  const out = [];
  for (const s of slices) {
    if (s.metadata.namespace !== svc.metadata.namespace) continue;
    if (s.metadata.labels?.['kubernetes.io/service-name'] !== svc.metadata.name) continue;
    const port = s.ports?.[0]?.port;
    for (const e of s.endpoints || []) {
      if (e.conditions?.ready === false) continue;
      for (const a of e.addresses || []) out.push(port ? `${a}:${port}` : a);
    }
  }
  return out.sort();
}

export function Networking({ data, inNamespace }) {
  const services = inNamespace(data.services).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  const ingresses = inNamespace(data.ingresses);
  return (
    <section>
      <h2>Services</h2>
      <table data-testid="services">
        <thead><tr><th>Namespace</th><th>Name</th><th>Type</th><th>Cluster IP</th><th>Ports</th><th>Endpoints</th></tr></thead>
        <tbody>
          {services.map((s) => {
            const eps = endpoints(s, data.slices);
            return (
              <tr data-testid={`service-${s.metadata.name}`}>
                <td>{s.metadata.namespace}</td>
                <td>{s.metadata.name}</td>
                <td>{s.spec?.type}</td>
                <td>{s.spec?.clusterIP}</td>
                <td>{ports(s)}</td>
                <td class={eps.length ? '' : 'muted'} data-testid="endpoints">{eps.length ? eps.join(', ') : 'none ready'}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
      <h2>Ingresses</h2>
      <table data-testid="ingresses">
        <thead><tr><th>Namespace</th><th>Name</th><th>Class</th><th>Rules</th><th>Address</th></tr></thead>
        <tbody>
          {ingresses.map((i) => (
            <tr>
              <td>{i.metadata.namespace}</td>
              <td>{i.metadata.name}</td>
              <td>{i.spec?.ingressClassName || '(default)'}</td>
              <td>
                {(i.spec?.rules || []).flatMap((r) =>
                  (r.http?.paths || []).map((p) => (
                    <div>
                      {r.host || '*'}{p.path || '/'} → {p.backend?.service?.name}:
                      {p.backend?.service?.port?.number ?? p.backend?.service?.port?.name}
                    </div>
                  )),
                )}
              </td>
              <td>
                {(i.status?.loadBalancer?.ingress || [])
                  .map((a) => `${a.ip || a.hostname}${a.ports?.[0] ? `:${a.ports[0].port}` : ''}`)
                  .join(', ')}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
