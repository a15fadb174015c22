//! The SPDY/3.1 framing `kubectl port-forward` speaks (directly after an HTTP upgrade up to
//! kubectl 1.30, inside a WebSocket from 1.31), the server-side subset: SYN_STREAM in,
//! SYN_REPLY, DATA, RST_STREAM, PING and GOAWAY both ways; SETTINGS, HEADERS and
//! WINDOW_UPDATE are read and ignored, as Go's spdystream (kubectl's side) does — it does no
//! flow control.
//!
//! Header blocks are zlib streams, one per direction for the whole session, primed with the
//! SPDY/3 dictionary and sync-flushed after each block (flate2 with the pure-Rust zlib-rs
//! backend, which has dictionaries).

use bytes::{Buf, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;

/// The FIN flag (control and data frames).
const FLAG_FIN: u8 = 0x01;

/// Frames larger than this are refused (kubectl sends at most 32 KiB of data at a time).
const MAX_FRAME: usize = 1 << 20;

/// `RST_STREAM` status: protocol error.
pub(crate) const PROTOCOL_ERROR: u32 = 1;
/// `RST_STREAM` status: cancel.
pub(crate) const CANCEL: u32 = 5;

/// The words of the SPDY/3 header-compression dictionary (SPDY/3 draft, section 2.6.10.1),
/// each written with a 32-bit big-endian length, followed by [`DICTIONARY_TAIL`] as is.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, ",
    "Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,",
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
);

/// The SPDY/3 header dictionary's bytes.
pub(crate) fn dictionary() -> Vec<u8> {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&u32::try_from(w.len()).unwrap_or(0).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
}

/// A frame the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A new stream from the client, with its (lower-cased) headers.
    SynStream {
        /// Stream id.
        stream: u32,
        /// The client sends nothing more on it.
        fin: bool,
        /// Headers.
        headers: Vec<(String, String)>,
    },
    /// Data on a stream.
    Data {
        /// Stream id.
        stream: u32,
        /// The sender's last frame on the stream.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// The client reset a stream.
    RstStream {
        /// Stream id.
        stream: u32,
        /// Why.
        status: u32,
    },
    /// A ping to echo (or the answer to ours).
    Ping(u32),
    /// The client is going away.
    GoAway,
    /// A frame kind this server ignores (SETTINGS, HEADERS, WINDOW_UPDATE, SYN_REPLY, ...).
    Ignored,
}

/// Why a session cannot go on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpdyError {
    /// Not SPDY/3 or not well formed.
    #[error("spdy protocol error: {0}")]
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(msg.into())
}

/// One side's framing state: the two header-compression streams.
pub(crate) struct Codec {
    inflate: Decompress,
    deflate: Compress,
    dictionary: Vec<u8>,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// A fresh session's codec.
    pub(crate) fn new() -> Self {
        let dictionary = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dictionary)
            .expect("a fresh zlib stream takes a dictionary");
        Self {
            inflate: Decompress::new(true),
            deflate,
            dictionary,
        }
    }

    /// Takes one whole frame off the front of `buf`, if there is one.
    ///
    /// # Errors
    /// [`SpdyError`] when the bytes are not SPDY/3.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        if len > MAX_FRAME {
            return Err(protocol(format!("a {len}-byte frame")));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let head = buf.split_to(8);
        let body = buf.split_to(len).freeze();
        let flags = head[4];
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                fin,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(protocol(format!("version {version}")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let word = |b: &Bytes, at: usize| -> Result<u32, SpdyError> {
            b.get(at..at + 4)
                .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or_else(|| protocol("a short control frame"))
        };
        Ok(Some(match kind {
            SYN_STREAM => {
                let stream = word(&body, 0)? & 0x7fff_ffff;
                let block = body
                    .get(10..)
                    .ok_or_else(|| protocol("a short SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream {
                    stream,
                    fin,
                    headers,
                }
            }
            RST_STREAM => Frame::RstStream {
                stream: word(&body, 0)? & 0x7fff_ffff,
                status: word(&body, 4)?,
            },
            PING => Frame::Ping(word(&body, 0)?),
            GOAWAY => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    /// Inflates and parses a header block.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if raw.capacity() - raw.len() < 256 {
                raw.reserve(raw.capacity().max(1024));
            }
            let before = self.inflate.total_in();
            match self
                .inflate
                .decompress_vec(input, &mut raw, FlushDecompress::Sync)
            {
                Ok(status) => {
                    let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(0);
                    input = &input[used.min(input.len())..];
                    if input.is_empty() && raw.capacity() > raw.len() {
                        break;
                    }
                    if status == Status::StreamEnd {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    let used = usize::try_from(self.inflate.total_in() - before).unwrap_or(0);
                    input = &input[used.min(input.len())..];
                    self.inflate
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
            }
        }
        let mut b = Bytes::from(raw);
        let count = |b: &mut Bytes| -> Result<usize, SpdyError> {
            if b.remaining() < 4 {
                return Err(protocol("a short header block"));
            }
            usize::try_from(b.get_u32()).map_err(|_| protocol("a header length"))
        };
        let text = |b: &mut Bytes| -> Result<String, SpdyError> {
            let n = count(b)?;
            if b.remaining() < n {
                return Err(protocol("a short header block"));
            }
            Ok(String::from_utf8_lossy(&b.split_to(n)).into_owned())
        };
        let n = count(&mut b)?;
        let mut headers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = text(&mut b)?.to_ascii_lowercase();
            let value = text(&mut b)?;
            headers.push((name, value));
        }
        Ok(headers)
    }

    /// A SYN_REPLY (no headers) accepting `stream`.
    pub(crate) fn syn_reply(&mut self, stream: u32) -> Vec<u8> {
        // An empty header block: a zero count.
        let mut block = Vec::with_capacity(64);
        self.deflate
            .compress_vec(&0u32.to_be_bytes(), &mut block, FlushCompress::Sync)
            .expect("deflating into a vector with room");
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&block);
        control(SYN_REPLY, 0, &body)
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    let len = u32::try_from(body.len()).unwrap_or(0);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// A DATA frame.
pub(crate) fn data(stream: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    let len = u32::try_from(payload.len()).unwrap_or(0);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A RST_STREAM frame.
pub(crate) fn rst_stream(stream: u32, status: u32) -> Vec<u8> {
    let mut body = stream.to_be_bytes().to_vec();
    body.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &body)
}

/// A PING frame.
pub(crate) fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

/// A GOAWAY frame (status OK).
pub(crate) fn goaway(last_stream: u32) -> Vec<u8> {
    let mut body = last_stream.to_be_bytes().to_vec();
    body.extend_from_slice(&0u32.to_be_bytes());
    control(GOAWAY, 0, &body)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    /// A client's header compressor.
    pub(crate) fn client_deflate() -> Compress {
        let mut client = Compress::new(Compression::default(), true);
        client.set_dictionary(&dictionary()).unwrap();
        client
    }

    /// What a client sends: a SYN_STREAM with `headers`, compressed by `deflate`.
    pub(crate) fn syn_stream(
        deflate: &mut Compress,
        stream: u32,
        headers: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut raw = u32::try_from(headers.len()).unwrap().to_be_bytes().to_vec();
        for (k, v) in headers {
            raw.extend_from_slice(&u32::try_from(k.len()).unwrap().to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&u32::try_from(v.len()).unwrap().to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut block = Vec::with_capacity(raw.len() + 64);
        deflate
            .compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        let mut body = stream.to_be_bytes().to_vec();
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&block);
        control(SYN_STREAM, 0, &body)
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(adler32(&d), 0xe3c6_a7c2, "the checksum zlib headers name");
    }

    #[test]
    fn frames_round_trip_through_the_codec() {
        let mut client = client_deflate();
        let mut server = Codec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&syn_stream(
            &mut client,
            1,
            &[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", "0"),
            ],
        ));
        buf.extend_from_slice(&syn_stream(
            &mut client,
            3,
            &[("streamType", "data"), ("port", "8080"), ("requestID", "0")],
        ));
        buf.extend_from_slice(&data(3, true, b"hello"));
        buf.extend_from_slice(&ping(7));
        // A partial frame waits for the rest.
        let rst = rst_stream(3, CANCEL);
        buf.extend_from_slice(&rst[..5]);
        let first = server.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            first,
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), "0".into())
                ]
            }
        );
        assert!(matches!(
            server.decode(&mut buf).unwrap(),
            Some(Frame::SynStream { stream: 3, .. })
        ));
        assert_eq!(
            server.decode(&mut buf).unwrap(),
            Some(Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"hello")
            })
        );
        assert_eq!(server.decode(&mut buf).unwrap(), Some(Frame::Ping(7)));
        assert_eq!(server.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&rst[5..]);
        assert_eq!(
            server.decode(&mut buf).unwrap(),
            Some(Frame::RstStream {
                stream: 3,
                status: CANCEL
            })
        );

        // The server's SYN_REPLY inflates with the dictionary on the client's side.
        let reply = server.syn_reply(3);
        assert_eq!(&reply[..4], &[0x80, 0x03, 0x00, 0x02]);
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(64);
        let err = inflate
            .decompress_vec(&reply[12..], &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(err.needs_dictionary().is_some());
        let used = usize::try_from(inflate.total_in()).unwrap();
        inflate.set_dictionary(&dictionary()).unwrap();
        inflate
            .decompress_vec(&reply[12 + used..], &mut out, FlushDecompress::Sync)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 0]);
    }
}
