// The dashboard talks only to the Kubernetes API, with the bearer token it was signed in with.
// Collections are kept current by list + watch (resourceVersion, bookmarks, a fresh list after
// 410 Gone), as client-go's reflector does; logs follow over one streaming response.

const TOKEN_KEY = 'wasmkube.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra) {
  return { Authorization: `Bearer ${token()}`, Accept: 'application/json', ...extra };
}

async function check(resp) {
  if (resp.ok) return resp;
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // not a Status
  }
  throw new ApiError(resp.status, body);
}

export async function get(path, signal) {
  const resp = await fetch(path, { headers: headers(), signal });
  return (await check(resp)).json();
}

/** Sends `body` as JSON of `contentType` with `method`; the answer's JSON. */
async function send(method, path, contentType, body) {
  const resp = await fetch(path, {
    method,
    headers: headers({ 'Content-Type': contentType }),
    body: JSON.stringify(body),
  });
  return (await check(resp)).json();
}

export const post = (path, body) => send('POST', path, 'application/json', body);

export const mergePatch = (path, patch) =>
  send('PATCH', path, 'application/merge-patch+json', patch);

/** Who the token belongs to (SelfSubjectReview, as `kubectl auth whoami`). */
export async function whoami() {
  const review = await post('/apis/authentication.k8s.io/v1/selfsubjectreviews', {
    apiVersion: 'authentication.k8s.io/v1',
    kind: 'SelfSubjectReview',
  });
  return review.status?.userInfo?.username || 'unknown';
}

/** Calls `onLine` with each complete line of a streaming response body. */
async function readLines(resp, onLine) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    pending += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  }
  if (pending) onLine(pending);
}

const key = (o) => `${o.metadata.namespace || ''}/${o.metadata.name}`;

/**
 * Keeps the collection at `path` (e.g. `/api/v1/pods`) current: `onChange(items)` after the
 * list and after every watch event, until `signal` aborts.
 */
export async function watchCollection(path, onChange, signal, onError) {
  const items = new Map();
  const emit = () => onChange([...items.values()]);
  const sep = path.includes('?') ? '&' : '?';
  let rv = null;
  let backoff = 250;
  while (!signal.aborted) {
    try {
      if (rv === null) {
        const list = await get(path, signal);
        items.clear();
        for (const o of list.items || []) items.set(key(o), o);
        rv = list.metadata?.resourceVersion || '0';
        emit();
      }
      const resp = await check(
        await fetch(
          `${path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${rv}`,
          { headers: headers(), signal },
        ),
      );
      backoff = 250;
      await readLines(resp, (line) => {
        if (!line.trim()) return;
        const ev = JSON.parse(line);
        if (ev.type === 'ERROR') {
          // 410 Gone: the watch fell behind compaction; list again.
          if (ev.object?.code === 410) rv = null;
          throw new ApiError(ev.object?.code || 500, ev.object);
        }
        if (ev.object?.metadata?.resourceVersion) rv = ev.object.metadata.resourceVersion;
        if (ev.type === 'BOOKMARK') return;
        if (ev.type === 'DELETED') items.delete(key(ev.object));
        else items.set(key(ev.object), ev.object);
        emit();
      });
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        onError?.(e);
        return;
      }
      if (e instanceof ApiError && e.status === 410) rv = null;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 5000);
    }
  }
}

/** Streams a container's log (`follow`), calling `onText` with each new piece. */
export async function followLog(namespace, pod, container, onText, signal) {
  const q = new URLSearchParams({ follow: 'true', tailLines: '500', container });
  const resp = await check(
    await fetch(`/api/v1/namespaces/${namespace}/pods/${pod}/log?${q}`, {
      headers: headers({ Accept: 'text/plain' }),
      signal,
    }),
  );
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onText(decoder.decode(value, { stream: true }));
  }
}
