import { useEffect, useState } from 'preact/hooks';
import * as api from '../api.js';

/** The cluster registry's repositories and tags (the distribution API has no watch: listed on
 * opening the view and on request). */
export function Images() {
  const [images, setImages] = useState(null);
  const [problem, setProblem] = useState(null);
  const [round, setRound] = useState(0);
  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      try {
        const catalog = await api.get('/v2/_catalog', abort.signal);
        const rows = [];
        for (const repo of catalog.repositories || []) {
          const tags = await api.get(`/v2/${repo}/tags/list`, abort.signal);
          rows.push({ repo, tags: tags.tags || [] });
        }
        setImages(rows);
      } catch (e) {
        if (!abort.signal.aborted) setProblem(e.message);
      }
    })();
    return () => abort.abort();
  }, [round]);
  return (
    <section>
      <h2>
        Images <button class="link" onClick={() => setRound(round + 1)}>refresh</button>
      </h2>
      <p class="muted">The cluster's own OCI registry (push with <code>wasmkube image push</code>).</p>
      {problem && <p class="error">{problem}</p>}
      <table data-testid="images">
        <thead><tr><th>Repository</th><th>Tags</th></tr></thead>
        <tbody>
          {(images || []).map((i) => (
            <tr><td>{i.repo}</td><td>{i.tags.join(', ')}</td></tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}
