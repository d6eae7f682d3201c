//! HTTP ingress: body limits, then the tenant's `on_ingress` hook.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::metrics::Metrics;
use crate::node::{IngressError, Node};
use crate::policy::{IngressRequest, IngressSource};
use crate::tenant::Tenant;
use crate::web::{header_pairs, insert_headers, json_response, HttpResponse};

/// `{"ok": false, "error": msg}` with a status.
fn json_error(status: u16, msg: &str) -> HttpResponse {
    json_response(status, &serde_json::json!({"ok": false, "error": msg}))
}

/// Handle one ingress request for `tenant`; `rel` is the path below the route prefix.
pub async fn handle(
    req: Request<Incoming>,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    rel: String,
    remote: SocketAddr,
    max_body: usize,
    timeout: Duration,
) -> HttpResponse {
    Metrics::inc(&node.metrics.http_requests);
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return json_error(413, &format!("request body exceeds {max_body} bytes"));
    }
    let body = match tokio::time::timeout(timeout, Limited::new(body, max_body).collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return json_error(413, &format!("request body exceeds {max_body} bytes"));
        }
        Ok(Err(e)) => return json_error(400, &format!("cannot read request body: {e}")),
        Err(_) => return json_error(408, "request body not received in time"),
    };
    let ireq = IngressRequest {
        source: IngressSource::Http {
            method: parts.method.as_str().to_owned(),
            path: rel,
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers: header_pairs(&parts.headers),
        },
        remote,
        body,
    };
    let out = match node.ingress(&tenant, &ireq).await {
        Ok(out) => out,
        Err(IngressError::Policy(_)) => {
            return json_error(500, "the tenant's policy failed on this request")
        }
        Err(IngressError::RateLimited(wait)) => {
            let mut r = json_error(429, "too many pushes for this tenant (max_pushes_per_sec)");
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(secs),
            );
            return r;
        }
        Err(e) => return json_error(503, &e.to_string()),
    };
    let mut r = Response::new(Full::new(out.body));
    match hyper::StatusCode::from_u16(out.status) {
        Ok(s) => *r.status_mut() = s,
        Err(_) => {
            tracing::warn!(tenant = %tenant.name, status = out.status, "policy returned an invalid HTTP status");
            return json_error(500, "the tenant's policy returned an invalid status");
        }
    }
    insert_headers(&mut r, out.headers);
    r
}
