//! Webhooks: the HTTP calls relay makes for plugins (the `webhook` action) and for
//! lifecycle callbacks (`login_webhook`, `disconnect_webhook`). Calls wait in a bounded
//! queue that never blocks the connection path (a full queue drops and counts), run at
//! most `CONCURRENCY` at once with a timeout each, and are retried with exponential
//! backoff on connection errors, timeouts, 429 and 5xx answers.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a webhook call cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// The method is not one relay calls with.
    #[error("webhook method {0:?} is not GET/POST/PUT/PATCH/DELETE")]
    Method(String),
    /// The URL does not parse.
    #[error("webhook URL {url:?} does not parse: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The URL is not absolute http(s).
    #[error("webhook URL {0} must be absolute http:// or https://")]
    NotAbsolute(String),
    /// A header name or value is invalid.
    #[error("webhook header {0:?} is not valid")]
    Header(String),
    /// The HTTPS client could not be set up (relay's fault).
    #[error("webhook TLS setup: {0}")]
    Tls(String),
}

/// Calls waiting to be made, across tenants.
const QUEUE: usize = 10_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 32;
/// First retry delay; doubled each time, at most [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One HTTP call to make.
#[derive(Debug, Clone)]
pub struct Call {
    /// Tenant, for logs.
    pub tenant: Arc<str>,
    /// Method (`GET`, `POST`, `PUT`, `PATCH`, `DELETE`).
    pub method: hyper::Method,
    /// Absolute `http://` or `https://` URL.
    pub url: hyper::Uri,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
    /// Time allowed for each attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

impl Call {
    /// Check a plugin's (or the config's) call; the error says what is wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: Arc<str>,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
        timeout: Duration,
        retries: u32,
    ) -> Result<Call, WebhookError> {
        let method = match method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                hyper::Method::from_bytes(m.as_bytes())
                    .map_err(|_| WebhookError::Method(m.to_owned()))?
            }
            other => return Err(WebhookError::Method(other.to_owned())),
        };
        let url: hyper::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| WebhookError::Url {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(WebhookError::NotAbsolute(url.to_string()));
        }
        for (k, v) in &headers {
            if http::HeaderName::try_from(k.as_str()).is_err()
                || http::HeaderValue::try_from(v.as_str()).is_err()
            {
                return Err(WebhookError::Header(k.clone()));
            }
        }
        Ok(Call {
            tenant,
            method,
            url,
            headers,
            body,
            timeout,
            retries,
        })
    }
}

/// `url` with `name=value` appended to its query (`?` or `&`), value URL-encoded.
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let enc: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{name}={enc}")
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook queue.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Call>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// The queue and its dispatcher task (stopped by `stop`).
    pub fn start(
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<(Self, impl std::future::Future<Output = ()> + Send + 'static), WebhookError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(https);
        let (tx, rx) = mpsc::channel(QUEUE);
        let w = Webhooks {
            tx,
            metrics: metrics.clone(),
        };
        Ok((w, dispatch(client, rx, metrics, stop)))
    }

    /// Queue a call without waiting; a full queue drops it (counted, logged).
    pub fn enqueue(&self, call: Call) -> bool {
        match self.tx.try_send(call) {
            Ok(()) => true,
            Err(e) => {
                Metrics::inc(&self.metrics.webhooks_dropped);
                let call = match e {
                    mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                };
                tracing::warn!(tenant = %call.tenant, url = %call.url, "webhook queue full: call dropped");
                false
            }
        }
    }
}

async fn dispatch(
    client: HttpClient,
    mut rx: mpsc::Receiver<Call>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    loop {
        let call = tokio::select! {
            c = rx.recv() => match c { Some(c) => c, None => return },
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (client, metrics, stop) = (client.clone(), metrics.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = perform(&client, &call, &metrics) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Make the call, retrying; counts the outcome.
async fn perform(client: &HttpClient, call: &Call, m: &Metrics) {
    let mut delay = BACKOFF;
    for attempt in 0..=call.retries {
        if attempt > 0 {
            Metrics::inc(&m.webhooks_retried);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_BACKOFF);
        }
        let mut req = hyper::Request::builder()
            .method(call.method.clone())
            .uri(call.url.clone())
            .header("user-agent", concat!("relay/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &call.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let Ok(req) = req.body(Full::new(call.body.clone())) else {
            Metrics::inc(&m.webhooks_failed);
            return;
        };
        let outcome = tokio::time::timeout(call.timeout, async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read (and drop) the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Ok::<_, String>(status)
        })
        .await;
        let retry_why = match outcome {
            Ok(Ok(s)) if s.is_success() || s.is_redirection() => {
                m.webhooks_sent.fetch_add(1, Relaxed);
                return;
            }
            Ok(Ok(s)) if s.is_server_error() || s.as_u16() == 429 => format!("status {s}"),
            Ok(Ok(s)) => {
                Metrics::inc(&m.webhooks_failed);
                tracing::warn!(tenant = %call.tenant, url = %call.url, status = %s, "webhook refused (not retried)");
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", call.timeout),
        };
        tracing::debug!(tenant = %call.tenant, url = %call.url, attempt, why = %retry_why, "webhook attempt failed");
        if attempt == call.retries {
            Metrics::inc(&m.webhooks_failed);
            tracing::warn!(tenant = %call.tenant, url = %call.url, attempts = attempt + 1, why = %retry_why, "webhook failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_checked() {
        let t: Arc<str> = Arc::from("t");
        let c = |m: &str, u: &str| {
            Call::new(
                t.clone(),
                m,
                u,
                vec![],
                Bytes::new(),
                Duration::from_secs(1),
                0,
            )
        };
        assert!(c("post", "http://127.0.0.1:9/x").is_ok());
        assert!(c("GET", "https://example.com/cb?a=1").is_ok());
        assert!(matches!(
            c("TRACE", "http://x/"),
            Err(WebhookError::Method(_))
        ));
        assert!(matches!(
            c("GET", "/relative"),
            Err(WebhookError::NotAbsolute(_))
        ));
        assert!(matches!(
            c("GET", "ftp://x/"),
            Err(WebhookError::NotAbsolute(_))
        ));
        assert_eq!(
            with_param("http://h/cb", "sid", "a b"),
            "http://h/cb?sid=a+b"
        );
        assert_eq!(
            with_param("http://h/cb?x=1", "sid", "s"),
            "http://h/cb?x=1&sid=s"
        );
    }
}
