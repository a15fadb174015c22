//! What the API server and the node's endpoint agree on for `pods/proxy` and
//! `services/proxy`: the API server sends the request to the node of the pod, at
//! [`POD_PROXY_PATH`]`/{namespace}/{pod}/{port}/{path}`, and the node carries it into the pod
//! network, as kube-apiserver's proxy dials the pod IP itself.

use http::HeaderName;

/// The node endpoint's path for a request to a pod's port.
pub const POD_PROXY_PATH: &str = "/podProxy";

/// Set by the node on its own answers (it could not reach the pod: 503; no such pod here: 404;
/// a malformed path: 400; the body says why), so that the API server tells them apart from the
/// pod's answers.
pub const NODE_ANSWER_HEADER: &str = "x-wasmkube-proxy-node";

/// Headers that belong to one connection, not to the request or answer carried across it
/// (RFC 9110 §7.6.1), plus the caller's credentials, which a proxied pod never sees
/// (kube-apiserver drops `Authorization` once it has authenticated a request).
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "impersonate-user",
    "impersonate-group",
    "impersonate-uid",
];

/// Whether a header is carried across a proxy hop.
#[must_use]
pub fn forwarded(name: &HeaderName) -> bool {
    let name = name.as_str();
    !NOT_FORWARDED.contains(&name) && !name.starts_with("impersonate-extra-")
}

/// Drops the headers that are not carried across a proxy hop ([`forwarded`]).
pub fn keep_forwarded(headers: &mut http::HeaderMap) {
    let dropped: Vec<HeaderName> = headers.keys().filter(|n| !forwarded(n)).cloned().collect();
    for name in dropped {
        headers.remove(name);
    }
}

/// The node endpoint's path for `path` (no leading `/`) on `port` of `namespace/pod`, with
/// the caller's query.
#[must_use]
pub fn pod_proxy_target(
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut target = format!("{POD_PROXY_PATH}/{namespace}/{pod}/{port}/{path}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_connection_headers_should_stay_behind() {
        for h in [
            "authorization",
            "connection",
            "host",
            "impersonate-extra-scopes",
        ] {
            assert!(!forwarded(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["accept", "content-type", "x-custom"] {
            assert!(forwarded(&HeaderName::from_static(h)), "{h}");
        }
        assert_eq!(
            pod_proxy_target("ns", "web", 8080, "a/b", Some("x=1")),
            "/podProxy/ns/web/8080/a/b?x=1"
        );
        assert_eq!(
            pod_proxy_target("ns", "web", 80, "", None),
            "/podProxy/ns/web/80/"
        );
    }
}
