//! Who may use the admin endpoints (`/admin/*`) and `/metrics`: addresses in
//! `admin_from` (loopback by default), never a cross-site browser request, and with
//! `admin_token` (or `RELAY_ADMIN_TOKEN`) set, only with `Authorization: Bearer <token>`.
//! Without a token, a request that came through a proxy (it carries `Forwarded`,
//! `X-Forwarded-For` or `X-Real-IP`) is refused: behind a same-host proxy every client
//! would look like loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use hyper::body::Incoming;
use hyper::Request;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::Node;
use crate::config::ServerConfig;
use crate::web::{text_response, HttpResponse};

/// The environment variable read when the config sets no `admin_token`.
pub const TOKEN_ENV: &str = "RELAY_ADMIN_TOKEN";

/// The admin endpoints' guard.
#[derive(Debug, Clone)]
pub struct AdminGuard {
    token: Option<String>,
    from: Vec<IpNet>,
}

/// Equal, in time that does not depend on where `a` and `b` differ (digests compared).
fn same_secret(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |d, (p, q)| d | (p ^ q)) == 0
}

impl AdminGuard {
    /// The guard `[server]` asks for (the token from the environment if not configured).
    pub fn new(server: &ServerConfig) -> Self {
        let token = server.admin_token.clone().or_else(|| {
            std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
        });
        AdminGuard {
            token,
            from: server.admin_from.clone(),
        }
    }

    /// `Ok` if the request may use an admin endpoint, else the answer to give (boxed:
    /// the refusal is the rare path).
    pub fn check(&self, headers: &HeaderMap, remote: SocketAddr) -> Result<(), Box<HttpResponse>> {
        let ip = remote.ip().to_canonical();
        if !self.from.iter().any(|n| n.contains(&ip)) {
            return Err(Box::new(text_response(
                403,
                "admin endpoints answer only addresses in admin_from\n",
            )));
        }
        let fetch_site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        if headers.contains_key(hyper::header::ORIGIN)
            || !matches!(fetch_site, "none" | "same-origin")
        {
            return Err(Box::new(text_response(
                403,
                "cross-site requests to admin endpoints are refused\n",
            )));
        }
        match &self.token {
            Some(t) => {
                let given = headers
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if same_secret(given, t) {
                    return Ok(());
                }
                let mut r = text_response(
                    401,
                    "admin endpoints need Authorization: Bearer <admin_token>\n",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                Err(Box::new(r))
            }
            None if ["forwarded", "x-forwarded-for", "x-real-ip"]
                .iter()
                .any(|h| headers.contains_key(*h)) =>
            {
                Err(Box::new(text_response(
                    403,
                    "this request came through a proxy: set admin_token to use admin endpoints\n",
                )))
            }
            None => Ok(()),
        }
    }
}

/// `POST /admin/reload[?tenant=name]`: reload WASM plugins now (`404` for a tenant this
/// relay does not have).
pub async fn reload(req: &Request<Incoming>, node: &Arc<Node>) -> HttpResponse {
    if req.method() != hyper::Method::POST {
        return text_response(405, "use POST\n");
    }
    let only = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "tenant")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(name) = only.as_deref().filter(|n| !node.tenants.contains_key(*n)) {
        let body = serde_json::json!({ "error": format!("no tenant named {name:?}") });
        return crate::web::json_response(404, &body);
    }
    let node = node.clone();
    let result = tokio::task::spawn_blocking(move || node.reload_plugins(only.as_deref())).await;
    match result {
        Ok(v) => {
            let failed = v
                .as_object()
                .is_some_and(|o| o.values().any(|r| r["ok"] == false));
            crate::web::json_response(if failed { 422 } else { 200 }, &v)
        }
        Err(e) => text_response(500, &format!("reload failed: {e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> AdminGuard {
        AdminGuard {
            token: token.map(str::to_owned),
            from: vec!["127.0.0.0/8".parse().unwrap()],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_guard_wants_the_address_no_cross_site_and_the_token() {
        let local: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:9".parse().unwrap();
        let status =
            |g: &AdminGuard, h: &HeaderMap, a| g.check(h, a).err().map(|r| r.status().as_u16());
        let none = guard(None);
        assert_eq!(status(&none, &headers(&[]), local), None);
        assert_eq!(status(&none, &headers(&[]), far), Some(403));
        assert_eq!(
            status(
                &none,
                &headers(&[("origin", "https://evil.example")]),
                local
            ),
            Some(403)
        );
        assert_eq!(
            status(&none, &headers(&[("sec-fetch-site", "cross-site")]), local),
            Some(403)
        );
        assert_eq!(
            status(&none, &headers(&[("x-forwarded-for", "1.2.3.4")]), local),
            Some(403)
        );
        let t = guard(Some("0123456789abcdef"));
        assert_eq!(status(&t, &headers(&[]), local), Some(401));
        assert_eq!(
            status(&t, &headers(&[("authorization", "Bearer nope")]), local),
            Some(401)
        );
        let ok = headers(&[
            ("authorization", "Bearer 0123456789abcdef"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(status(&t, &ok, local), None, "a token makes proxies fine");
        assert_eq!(status(&t, &ok, far), Some(403), "admin_from still holds");
    }
}
