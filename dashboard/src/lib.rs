//! The web dashboard: a single-page app (Preact, bundled by esbuild from `web/` into `dist/`)
//! that the API server serves under `/dashboard/`. It signs in with a bearer token and talks
//! only to the Kubernetes API with it — list + watch for every view, `pods/log?follow` for
//! logs, the `scale` subresource to scale — so it can do exactly what that token may.
//!
//! The bundle is embedded at compile time, so building the binary needs no Node.js; `web/`
//! rebuilds it (`npm ci && npm run build`), and `npm run check` (run by CI) fails when the
//! committed `dist/` differs from what the sources produce.

/// Where the dashboard is served.
pub const PREFIX: &str = "/dashboard";

/// One file of the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its bytes.
    pub body: &'static [u8],
    /// Its media type.
    pub content_type: &'static str,
}

const INDEX: Asset = Asset {
    body: include_bytes!("../web/index.html"),
    content_type: "text/html; charset=utf-8",
};

const FILES: &[(&str, Asset)] = &[
    (
        "app.js",
        Asset {
            body: include_bytes!("../dist/app.js"),
            content_type: "text/javascript; charset=utf-8",
        },
    ),
    (
        "app.css",
        Asset {
            body: include_bytes!("../dist/app.css"),
            content_type: "text/css; charset=utf-8",
        },
    ),
    ("index.html", INDEX),
];

/// Whether the API server should hand `path` to [`asset`] (without authentication: the page
/// itself holds no data; every API call it makes carries the user's token).
#[must_use]
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/dashboard/")
}

/// What to answer for `path`.
#[must_use]
pub fn respond(path: &str) -> Response {
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Response::NotFound;
    };
    match rest {
        // Relative asset URLs need the trailing slash.
        "" => Response::Redirect("/dashboard/"),
        "/" => Response::Asset(INDEX),
        _ => FILES
            .iter()
            .find(|(name, _)| rest.strip_prefix('/') == Some(*name))
            .map_or(Response::NotFound, |(_, a)| Response::Asset(*a)),
    }
}

/// The answer to a dashboard path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// 200 with this file.
    Asset(Asset),
    /// 308 to this location.
    Redirect(&'static str),
    /// 404.
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_is_served_under_the_prefix() {
        assert!(serves("/dashboard") && serves("/dashboard/app.js"));
        assert!(!serves("/dashboards") && !serves("/api/v1/pods"));
        assert_eq!(respond("/dashboard"), Response::Redirect("/dashboard/"));
        let Response::Asset(index) = respond("/dashboard/") else {
            panic!("the index page")
        };
        assert!(String::from_utf8_lossy(index.body).contains("app.js"));
        let Response::Asset(js) = respond("/dashboard/app.js") else {
            panic!("the script")
        };
        assert!(js.content_type.starts_with("text/javascript") && js.body.len() > 1000);
        assert_eq!(respond("/dashboard/../Cargo.toml"), Response::NotFound);
        assert_eq!(respond("/dashboard/nope.js"), Response::NotFound);
    }
}
