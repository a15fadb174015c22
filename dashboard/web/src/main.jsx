import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import * as api from './api.js';
import { useWatch, useHash } from './hooks.js';
import { Overview, useSeries } from './views/overview.jsx';
import { Pods } from './views/pods.jsx';
import { Deployments } from './views/deployments.jsx';
import { Networking } from './views/networking.jsx';
import { Images } from './views/images.jsx';
import './style.css';

const VIEWS = [
  ['overview', 'Overview'],
  ['pods', 'Pods'],
  ['deployments', 'Deployments'],
  ['networking', 'Services & Ingresses'],
  ['images', 'Images'],
];

function SignIn({ onSignedIn, error }) {
  const [value, setValue] = useState('');
  const [problem, setProblem] = useState(error);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    api.setToken(value.trim());
    try {
      onSignedIn(await api.whoami());
    } catch (err) {
      api.setToken(null);
      setProblem(err.status === 401 ? 'That token is not valid for this cluster.' : err.message);
    }
    setBusy(false);
  };
  return (
    <main class="signin">
      <form onSubmit={submit}>
        <h1>wasmkube</h1>
        <p>Sign in with a bearer token: the one in your kubeconfig, or a service account's from
          <code>kubectl create token NAME</code>. The dashboard acts with its permissions only.</p>
        <textarea
          data-testid="token"
          rows="4"
          placeholder="token"
          value={value}
          onInput={(e) => setValue(e.target.value)}
        />
        {problem && <p class="error" data-testid="signin-error">{problem}</p>}
        <button type="submit" data-testid="signin" disabled={busy || !value.trim()}>Sign in</button>
      </form>
    </main>
  );
}

function Shell({ user, onSignOut }) {
  const [route, navigate] = useHash();
  const [view, ...rest] = (route || 'overview').split('/');
  const [namespace, setNamespace] = useState('');
  const [denied, setDenied] = useState(null);
  // A token that may not read across namespaces (a service account bound in its own
  // namespace) gets the views of its namespace instead.
  const [scoped, setScoped] = useState(null);
  const home = user.startsWith('system:serviceaccount:') ? user.split(':')[2] : 'default';
  const onError = (e) => {
    if (e.status === 403 && !scoped) setScoped(home);
    else setDenied(e.message);
  };
  const quiet = () => {};
  const at = (base, plural) =>
    scoped ? `${base}/namespaces/${scoped}/${plural}` : `${base}/${plural}`;
  const data = {
    nodes: useWatch('/api/v1/nodes', quiet),
    pods: useWatch(at('/api/v1', 'pods'), onError),
    namespaces: useWatch('/api/v1/namespaces', quiet),
    events: useWatch(at('/api/v1', 'events'), onError),
    deployments: useWatch(at('/apis/apps/v1', 'deployments'), onError),
    replicasets: useWatch(at('/apis/apps/v1', 'replicasets'), onError),
    services: useWatch(at('/api/v1', 'services'), onError),
    slices: useWatch(at('/apis/discovery.k8s.io/v1', 'endpointslices'), onError),
    ingresses: useWatch(at('/apis/networking.k8s.io/v1', 'ingresses'), onError),
  };
  const namespaces = scoped ? [scoped] : data.namespaces.map((n) => n.metadata.name);
  const [series, usage] = useSeries(data.pods);
  const inNamespace = (list) =>
    namespace ? list.filter((o) => o.metadata.namespace === namespace) : list;
  const props = { data, inNamespace, namespace, navigate, rest };
  return (
    <div class="shell">
      <nav>
        <div class="brand">wasmkube</div>
        {VIEWS.map(([id, label]) => (
          <a href={`#${id}`} class={view === id ? 'active' : ''} data-testid={`nav-${id}`}>
            {label}
          </a>
        ))}
        <div class="grow" />
        <label class="ns">
          Namespace
          <select data-testid="namespace" value={namespace} onChange={(e) => setNamespace(e.target.value)}>
            <option value="">{scoped ? scoped : 'all'}</option>
            {namespaces.map((n) => (
              <option value={n}>{n}</option>
            ))}
          </select>
        </label>
        <div class="user" data-testid="user">{user}</div>
        <button class="link" onClick={onSignOut}>Sign out</button>
      </nav>
      <main>
        {scoped && (
          <p class="muted" data-testid="scoped">
            This token may not read across namespaces: showing namespace {scoped}.
          </p>
        )}
        {denied && <p class="error">The API refused a watch: {denied}</p>}
        {view === 'overview' && <Overview {...props} series={series} usage={usage} />}
        {view === 'pods' && <Pods {...props} />}
        {view === 'deployments' && <Deployments {...props} />}
        {view === 'networking' && <Networking {...props} />}
        {view === 'images' && <Images {...props} />}
      </main>
    </div>
  );
}

function App() {
  const [user, setUser] = useState(null);
  const [checking, setChecking] = useState(!!api.token());
  useEffect(() => {
    if (!api.token()) return;
    api
      .whoami()
      .then(setUser)
      .catch(() => api.setToken(null))
      .finally(() => setChecking(false));
  }, []);
  if (checking) return <main class="signin"><p>Signing in…</p></main>;
  if (!user) return <SignIn onSignedIn={setUser} />;
  return (
    <Shell
      user={user}
      onSignOut={() => {
        api.setToken(null);
        setUser(null);
      }}
    />
  );
}

render(<App />, document.getElementById('app'));
