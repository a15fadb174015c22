//! The connection under hyper. hyper answers a request it cannot parse (more than 100 headers,
//! a URI over 65,534 bytes, bytes outside the allowed set in the request line, a negative or
//! malformed `Content-Length`) by itself, before any handler runs, with a head and no body.
//! [`StatusOnParseError`] sits between the TLS stream and hyper and replaces exactly those
//! answers with the same status carrying a Kubernetes `Status` body, so every refusal a client
//! sees is a `Status`.
//!
//! Recognising them is safe because the handlers never write a 400, 414 or 431 without a body:
//! every `ApiError` response carries its `Status`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// hyper's limit on a request's header count (its default, kept: a larger one allocates that
/// many slots for every request head it parses).
pub(crate) const MAX_HEADERS: usize = 100;

/// The longest URI the `http` crate represents.
const MAX_URI: usize = u16::MAX as usize - 1;

/// A stream that rewrites hyper's bodiless parse-error answers into `Status` responses.
pub(crate) struct StatusOnParseError<IO> {
    io: IO,
    max_header_bytes: usize,
    /// The replacement being written, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl<IO> StatusOnParseError<IO> {
    pub(crate) fn new(io: IO, max_header_bytes: usize) -> Self {
        StatusOnParseError {
            io,
            max_header_bytes,
            replacing: None,
        }
    }

    /// The response to write instead of `head`, built only once [`refusal`] recognised it.
    fn replacement(&self, head: &[u8], code: u16) -> Vec<u8> {
        let error = match code {
            414 => ApiError::uri_too_long(MAX_URI),
            431 => ApiError::too_many_headers(MAX_HEADERS, self.max_header_bytes),
            _ => ApiError::bad_request(
                "the request could not be parsed: malformed request line, header or Content-Length",
            ),
        };
        let body = error.status_body();
        let mut out = Vec::with_capacity(head.len() + 96 + body.len());
        // hyper's head lines (status line, date) without its `content-length: 0`.
        for line in head.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() && !line.starts_with(b"content-length:") {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(&body);
        out
    }
}

/// The status code of `buf` when it is one of hyper's own bodiless parse-error answers. Runs
/// for every write, so it looks at the status code before scanning anything.
fn refusal(buf: &[u8]) -> Option<u16> {
    let code = match buf.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    (buf.ends_with(b"\r\n\r\n") && contains(buf, b"\r\ncontent-length: 0\r\n")).then_some(code)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl<IO: AsyncRead + Unpin> AsyncRead for StatusOnParseError<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StatusOnParseError<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(code) = refusal(buf)
        {
            self.replacing = Some((self.replacement(buf, code), 0));
        }
        let this = &mut *self;
        let Some((bytes, done)) = &mut this.replacing else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        // hyper retries the same head after `Pending`; it counts as written once ours is.
        while *done < bytes.len() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        this.replacing = None;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next())
            && (self.replacing.is_some() || refusal(only).is_some())
        {
            return self.poll_write(cx, only);
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves `request` (raw bytes) on an in-memory connection through the adapter and returns
    /// the whole answer.
    async fn exchange(request: Vec<u8>) -> String {
        let (client, server) = tokio::io::duplex(1 << 20);
        let app = axum::Router::new().fallback(|| async { "handled" });
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().max_headers(MAX_HEADERS);
            let io = TokioIo::new(StatusOnParseError::new(server, 1 << 20));
            let _ = builder
                .serve_connection(io, TowerToHyperService::new(app))
                .await;
        });
        let (mut read, mut write) = tokio::io::split(client);
        write.write_all(&request).await.expect("send");
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read.read_to_end(&mut out),
        )
        .await
        .expect("the server closes the connection")
        .expect("read");
        String::from_utf8(out).expect("utf-8")
    }

    fn status_of(answer: &str) -> (u16, serde_json::Value) {
        let code = answer[9..12].parse().expect("a status code");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("content-type: application/json"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a length")
            .parse()
            .expect("a number");
        assert_eq!(length, body.len(), "{answer}");
        (code, serde_json::from_str(body).expect("a JSON body"))
    }

    #[tokio::test]
    async fn hyper_parse_errors_should_answer_a_status() {
        let many: String = (0..2000).map(|i| format!("x-h{i}: v\r\n")).collect();
        let cases = [
            (
                format!("GET /api HTTP/1.1\r\nhost: a\r\n{many}\r\n"),
                431,
                "at most 100 headers",
            ),
            (
                format!(
                    "GET /api/v1/namespaces/default/pods/{} HTTP/1.1\r\nhost: a\r\n\r\n",
                    "n".repeat(100_000)
                ),
                414,
                "URI too long",
            ),
            (
                "GET /api/v1/\x01\x7f HTTP/1.1\r\nhost: a\r\n\r\n".to_string(),
                400,
                "could not be parsed",
            ),
            (
                "POST /api/v1/namespaces HTTP/1.1\r\nhost: a\r\ncontent-length: -5\r\n\r\n"
                    .to_string(),
                400,
                "could not be parsed",
            ),
        ];
        for (request, want, words) in cases {
            let answer = exchange(request.into_bytes()).await;
            let (code, status) = status_of(&answer);
            assert_eq!(code, want, "{answer}");
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["code"], want);
            assert!(
                status["message"].as_str().unwrap_or("").contains(words),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn handled_requests_should_pass_through_unchanged() {
        let answer =
            exchange(b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".to_vec()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhandled"), "{answer}");
    }
}
