//! A `wasi:http/proxy` frontend: for every request it calls a backend Service by its DNS name
//! (`http://backend/` unless the request names another with `?backend=URL-less-host`) through
//! `wasi:http/outgoing-handler`, and answers with what the backend said.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

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

/// GETs `http://{authority}{path}` and returns (status, body).
fn call(authority: &str, path: &str) -> Result<(u16, String), String> {
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&Scheme::Http)).map_err(|()| "scheme")?;
    req.set_authority(Some(authority)).map_err(|()| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|()| "path")?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    pending.subscribe().block();
    let resp = pending
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.consume().map_err(|()| "body")?;
    let stream = body.stream().map_err(|()| "stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    drop(stream);
    IncomingBody::finish(body);
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

impl wasi::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_owned());
        let backend = backend_of(&path);
        let (status, text) = match call(&backend, "/from-frontend") {
            Ok((code, body)) => (200, format!("frontend -> {backend} ({code}): {body}")),
            Err(e) => (502, format!("frontend -> {backend} failed: {e}\n")),
        };
        let headers = Fields::from_list(&[(
            "content-type".to_owned(),
            b"text/plain; charset=utf-8".to_vec(),
        )])
        .expect("static header is valid");
        let response = OutgoingResponse::new(headers);
        response.set_status_code(status).expect("valid status");
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        stream.blocking_write_and_flush(text.as_bytes()).expect("client is reading");
        drop(stream);
        OutgoingBody::finish(body, None).expect("body finishes once");
    }
}
