//! The first two stages of every request: who is asking ([`Authenticator`]) and whether they
//! may ([`Authorizer`]), as kube-apiserver's `authentication.Request` and `authorizer.Authorizer`.
//! Credentials: client certificates from the cluster CA ([`X509`]), the admin token, and the
//! cluster's signed tokens ([`Any`] tries each). Decisions are RBAC's ([`crate::rbac`]).

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};

use crate::error::ApiError;

/// An authenticated caller (`user.Info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name (`system:admin`, `system:node:NAME`, ...).
    pub name: String,
    /// Its groups (`system:masters`, `system:authenticated`, ...).
    pub groups: Vec<String>,
}

/// Finds the caller of a request.
pub trait Authenticator: Send + Sync {
    /// The caller, or `None` when the request carries no credential this authenticator knows.
    fn authenticate(&self, req: &Parts) -> Option<UserInfo>;
}

/// The verified client certificate of the connection a request came on (a request extension
/// the listener adds).
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Option<wasmkube_client::tls::Peer>);

/// Callers with a client certificate from the cluster CA: the common name is the user, the
/// organizations its groups (kube-apiserver's `--client-ca-file`).
pub struct X509;

impl Authenticator for X509 {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        let peer = req.extensions.get::<ClientCertificate>()?.0.clone()?;
        let mut groups = peer.groups;
        groups.push(AUTHENTICATED.into());
        Some(UserInfo {
            name: peer.name,
            groups,
        })
    }
}

/// The group of every authenticated caller.
pub const AUTHENTICATED: &str = "system:authenticated";

/// The bearer token of a request ([`wasmkube_api::bearer_token`]).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    wasmkube_api::bearer_token(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The cluster admin's static token (kube-apiserver's `--token-auth-file` with one line).
pub struct AdminToken {
    token: String,
}

impl AdminToken {
    /// Accepts `token`.
    pub fn new(token: impl Into<String>) -> Self {
        AdminToken {
            token: token.into(),
        }
    }
}

impl Authenticator for AdminToken {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        let token = bearer_token(&req.headers)?;
        wasmkube_api::secrets_equal(token.as_bytes(), self.token.as_bytes()).then(|| UserInfo {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), AUTHENTICATED.into()],
        })
    }
}

/// The first of several authenticators that knows the request's credential
/// (kube-apiserver's union authenticator).
pub struct Any(pub Vec<Box<dyn Authenticator>>);

impl Authenticator for Any {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        self.0.iter().find_map(|a| a.authenticate(req))
    }
}

impl<T: Authenticator + ?Sized> Authenticator for std::sync::Arc<T> {
    fn authenticate(&self, req: &Parts) -> Option<UserInfo> {
        (**self).authenticate(req)
    }
}

impl UserInfo {
    /// Whether the caller is in group `system:masters` (the cluster's administrators).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a request asks to do (`authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// the HTTP method in lower case for non-resource requests.
    pub verb: String,
    /// The API group (empty for core), for resource requests.
    pub group: String,
    /// The resource (plural), empty for non-resource requests.
    pub resource: String,
    /// The subresource (`status`, `log`, ...).
    pub subresource: String,
    /// The namespace, when the request names one.
    pub namespace: String,
    /// The object name, when the request names one.
    pub name: String,
    /// The request path.
    pub path: String,
}

impl Attributes {
    /// The attributes of a request, resolved from its method, path and query as kube-apiserver's
    /// `RequestInfoFactory` does.
    pub fn of(method: &Method, path: &str, watch: bool) -> Attributes {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut a = Attributes {
            verb: method.as_str().to_ascii_lowercase(),
            group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: path.to_owned(),
        };
        let rest = match segs.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => rest,
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => {
                a.group = (*group).to_owned();
                rest
            }
            _ => return a,
        };
        let (watch_path, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            _ => (false, rest),
        };
        let rest = match rest {
            // A namespace's own subresources stay on the namespace.
            ["namespaces", _, "status" | "finalize"] => rest,
            ["namespaces", ns, tail @ ..] if !tail.is_empty() => {
                a.namespace = (*ns).to_owned();
                tail
            }
            ["namespaces", ns] => {
                a.namespace = (*ns).to_owned();
                rest
            }
            _ => rest,
        };
        a.resource = rest.first().copied().unwrap_or_default().to_owned();
        a.name = rest.get(1).copied().unwrap_or_default().to_owned();
        a.subresource = rest.get(2).copied().unwrap_or_default().to_owned();
        let named = !a.name.is_empty();
        a.verb = match *method {
            Method::GET | Method::HEAD if watch || watch_path => "watch",
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => return a,
        }
        .to_owned();
        a
    }

    /// Whether this is a request for an API resource (not `/healthz`, `/version`, ...).
    pub fn is_resource_request(&self) -> bool {
        !self.resource.is_empty()
    }
}

/// The user a request acts as: `user` itself, or the user its `Impersonate-User`,
/// `Impersonate-Group` and `Impersonate-Uid` headers name when `user` may `impersonate` each
/// of them (kube-apiserver's `WithImpersonation`).
///
/// # Errors
/// 400 for groups or a uid without a user; 403 when `user` may not impersonate one of them.
pub(crate) fn impersonate(
    authz: &dyn Authorizer,
    user: UserInfo,
    headers: &HeaderMap,
) -> Result<UserInfo, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    };
    let (names, groups, uids) = (
        values("impersonate-user"),
        values("impersonate-group"),
        values("impersonate-uid"),
    );
    let extras = headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-extra-"));
    let Some(name) = names.first() else {
        if groups.is_empty() && uids.is_empty() && !extras {
            return Ok(user);
        }
        return Err(ApiError::bad_request(format!(
            "requested groups {groups:?} or a uid without impersonating a user"
        )));
    };
    let check = |resource: &str, group: &str, namespace: &str, object: &str| {
        let attrs = Attributes {
            verb: "impersonate".into(),
            group: group.into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: object.into(),
            path: String::new(),
        };
        authz.authorize(&user, &attrs)
    };
    let mut impersonated = Vec::new();
    match name
        .strip_prefix(crate::rbac::SA_PREFIX)
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => {
            check("serviceaccounts", "", ns, sa)?;
            impersonated.push("system:serviceaccounts".to_owned());
            impersonated.push(format!("system:serviceaccounts:{ns}"));
        }
        None => check("users", "", "", name)?,
    }
    for g in &groups {
        check("groups", "", "", g)?;
        impersonated.push(g.clone());
    }
    for u in &uids {
        check("uids", "authentication.k8s.io", "", u)?;
    }
    if name != "system:anonymous" && !impersonated.iter().any(|g| g == AUTHENTICATED) {
        impersonated.push(AUTHENTICATED.into());
    }
    Ok(UserInfo {
        name: name.clone(),
        groups: impersonated,
    })
}

/// Decides whether a caller may do what a request asks.
pub trait Authorizer: Send + Sync {
    /// `Ok` to go on; a 403 `Status` otherwise.
    ///
    /// # Errors
    /// [`ApiError::forbidden_request`] (403) when the caller may not.
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError>;
}

impl<T: Authorizer + ?Sized> Authorizer for std::sync::Arc<T> {
    fn authorize(&self, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        (**self).authorize(user, attrs)
    }
}

/// Every authenticated caller may do everything: the authorizer while the admin token is the
/// only credential (RBAC comes later).
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, _user: &UserInfo, _attrs: &Attributes) -> Result<(), ApiError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(value: &str) -> Parts {
        let mut parts = axum::http::Request::new(()).into_parts().0;
        parts
            .headers
            .insert(header::AUTHORIZATION, value.parse().expect("header"));
        parts
    }

    #[test]
    fn bearer_tokens_should_be_parsed_as_kube_apiserver_does() {
        let admin = AdminToken::new("s3cret");
        assert!(admin.authenticate(&auth("Bearer s3cret")).is_some());
        assert!(
            admin.authenticate(&auth("bearer s3cret")).is_some(),
            "scheme is case-insensitive"
        );
        assert!(
            admin.authenticate(&auth("Bearer  s3cret")).is_none(),
            "two spaces: empty token"
        );
        assert!(admin.authenticate(&auth("Bearer s3cre")).is_none());
        assert!(
            admin
                .authenticate(&auth("Basic YW55b25lOnMzY3JldA=="))
                .is_none(),
            "no basic auth"
        );
        assert!(
            admin
                .authenticate(&axum::http::Request::new(()).into_parts().0)
                .is_none()
        );
    }

    #[test]
    fn attributes_should_name_verb_resource_and_object() {
        let a = Attributes::of(
            &Method::GET,
            "/api/v1/namespaces/default/pods/web/log",
            false,
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str(),
                a.namespace.as_str()
            ),
            ("get", "pods", "web", "log", "default")
        );
        let a = Attributes::of(&Method::GET, "/apis/apps/v1/deployments", true);
        assert_eq!((a.verb.as_str(), a.group.as_str()), ("watch", "apps"));
        let a = Attributes::of(&Method::DELETE, "/api/v1/namespaces/x/configmaps", false);
        assert_eq!(a.verb, "deletecollection");
        let a = Attributes::of(&Method::DELETE, "/api/v1/namespaces/x", false);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("delete", "namespaces", "x")
        );
        let a = Attributes::of(&Method::PUT, "/api/v1/namespaces/x/finalize", false);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("namespaces", "x", "finalize")
        );
        let a = Attributes::of(&Method::GET, "/healthz", false);
        assert!(!a.is_resource_request());
        assert_eq!(a.verb, "get");
    }
}
