//! What the sample guests share over `wasi:http`: a blocking request to another server and a
//! plain-text answer to the request being handled.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingBody, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

/// GETs `scheme://authority/path` with `headers` and returns (status, body as text).
///
/// # Errors
/// What `wasi:http` reported, as text.
pub fn get(
    scheme: Scheme,
    authority: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
) -> Result<(u16, String), String> {
    let req = OutgoingRequest::new(Fields::from_list(headers).map_err(|e| format!("{e:?}"))?);
    req.set_scheme(Some(&scheme)).map_err(|()| "scheme")?;
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
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend_from_slice(&chunk);
    }
    drop(stream);
    IncomingBody::finish(body);
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Answers the request being handled with `status` and `text` as `text/plain`.
pub fn answer(out: ResponseOutparam, status: u16, text: &str) {
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
    stream
        .blocking_write_and_flush(text.as_bytes())
        .expect("client is reading");
    drop(stream);
    OutgoingBody::finish(body, None).expect("body finishes once");
}
