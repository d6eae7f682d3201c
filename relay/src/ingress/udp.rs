//! UDP ingress: one datagram = one request to the tenant's policy; the
//! outcome's body (if any) is sent back as the reply datagram.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::node::{IngressError, Node};
use crate::policy::{IngressRequest, IngressSource};
use crate::tenant::Tenant;

/// The reply to a datagram over the tenant's `max_pushes_per_sec`.
const RATE_LIMITED_REPLY: &[u8] = b"{\"ok\":false,\"error\":\"rate\"}";

/// Datagrams handled concurrently per listener.
const CONCURRENCY: usize = 1024;

/// Receive datagrams until shutdown.
pub async fn serve(
    sock: UdpSocket,
    name: String,
    tenant: Arc<Tenant>,
    node: Arc<Node>,
    max_body: usize,
) {
    let sock = Arc::new(sock);
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut buf = vec![0u8; 65_536];
    let token = node.shutdown.token.clone();
    loop {
        let (n, peer) = tokio::select! {
            _ = token.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(listener = %name, error = %e, "udp receive error");
                    continue;
                }
            },
        };
        Metrics::inc(&node.metrics.udp_datagrams);
        let ip = peer.ip().to_canonical();
        if !tenant.config.udp_allow.iter().any(|net| net.contains(&ip)) {
            Metrics::inc(&node.metrics.udp_denied);
            tracing::debug!(listener = %name, %peer, "udp datagram from a source not in udp_allow: dropped");
            continue;
        }
        if n > max_body {
            tracing::debug!(listener = %name, %peer, n, "udp datagram exceeds max_body_bytes: dropped");
            continue;
        }
        let body = Bytes::copy_from_slice(&buf[..n]);
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (sock, tenant, node2) = (sock.clone(), tenant.clone(), node.clone());
        node.shutdown.tracker.spawn(async move {
            let _permit = permit;
            let req = IngressRequest {
                source: IngressSource::Udp,
                remote: peer,
                body,
            };
            // The reply goes out once every offline message kept is durable. A source
            // outside `udp_trusted` gets no more bytes than it sent (whoever spoofs a
            // victim's address must not get an amplifier).
            let trusted = tenant.config.rates.udp_trusted.iter().any(|n| n.contains(&ip));
            let reply = |body: &[u8]| -> Option<Vec<u8>> {
                if body.is_empty() || (!trusted && body.len() > n) {
                    if !body.is_empty() {
                        Metrics::inc(&node2.metrics.udp_replies_suppressed);
                    }
                    return None;
                }
                Some(body.to_vec())
            };
            match node2.ingress(&tenant, &req).await {
                Ok(out) => {
                    if let Some(b) = reply(&out.body) {
                        let _ = sock.send_to(&b, peer).await;
                    }
                }
                Err(IngressError::RateLimited(_)) => {
                    if let Some(b) = reply(RATE_LIMITED_REPLY) {
                        let _ = sock.send_to(&b, peer).await;
                    }
                }
                // A policy failure is logged by the node; a store failure is said here.
                Err(IngressError::Policy(_)) => {}
                Err(e) => {
                    tracing::warn!(tenant = %tenant.name, error = %e, "udp push not stored: no reply")
                }
            }
        });
    }
}
