//! A `wasi:http/proxy` frontend: for every request it calls a backend Service by its DNS name
//! (`http://backend/` unless the request names another with `?backend=URL-less-host`) through
//! `wasi:http/outgoing-handler`, and answers with what the backend said.

use wasi::http::types::{IncomingRequest, ResponseOutparam, Scheme};

struct Frontend;

wasi::http::proxy::export!(Frontend);

/// `backend=HOST[:PORT]` from the query, else `backend`.
fn backend_of(path: &str) -> String {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("backend="))
        .filter(|b| !b.is_empty())
        .unwrap_or("backend")
        .to_owned()
}

impl wasi::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let backend = backend_of(&path);
        let (status, text) = match guest_http::get(Scheme::Http, &backend, "/from-frontend", &[]) {
            Ok((code, body)) => (200, format!("frontend -> {backend} ({code}): {body}")),
            Err(e) => (502, format!("frontend -> {backend} failed: {e}\n")),
        };
        guest_http::answer(out, status, &text);
    }
}
