import { useEffect, useState } from 'preact/hooks';
import { watchCollection } from './api.js';

/** The objects of a collection, kept current by a watch while the component is shown. */
export function useWatch(path, onError) {
  const [items, setItems] = useState([]);
  useEffect(() => {
    setItems([]);
    const abort = new AbortController();
    watchCollection(path, setItems, abort.signal, onError);
    return () => abort.abort();
  }, [path]);
  return items;
}

/** The location's `#fragment`, and a way to change it. */
export function useHash() {
  const read = () => decodeURIComponent(location.hash.replace(/^#/, ''));
  const [hash, setHash] = useState(read());
  useEffect(() => {
    const on = () => setHash(read());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return [hash, (h) => (location.hash = h)];
}

/** A clock that ticks every `ms`, for ages. */
export function useNow(ms = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}
