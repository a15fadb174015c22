//! A `wasi:http/proxy` component: the wasmlet instantiates it once per request.
//! Answers every request with a greeting naming the method and path; `?sleep=MS` first waits
//! that long (a slow handler, for request-driven autoscaling).

use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Hello;

wasi::http::proxy::export!(Hello);

impl wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Connect => "CONNECT".to_owned(),
            Method::Trace => "TRACE".to_owned(),
            Method::Other(m) => m,
        };
        let sleep_ms = path
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("sleep=")))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(ms) = sleep_ms {
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        }
        let text = format!("Hello from wasmkube! {method} {path}\n");

        guest_http::answer(out, 200, &text);
    }
}
