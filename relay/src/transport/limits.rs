//! A listener's connection limits: at most `max_connections` open, at most
//! `max_connections_per_ip` per address, held by a [`ConnSlot`] for a connection's life.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one listener and what counts against them.
pub struct ConnLimits {
    /// Connections allowed per IP (IPv6: per /64).
    max_per_ip: usize,
    /// Open connections by IP.
    per_ip: DashMap<IpAddr, usize>,
    /// Permits for `max_connections`.
    permits: Arc<Semaphore>,
}

impl ConnLimits {
    /// Limits of `max_connections` in all and `max_per_ip` per address.
    pub fn new(max_connections: usize, max_per_ip: usize) -> Self {
        ConnLimits {
            max_per_ip,
            per_ip: DashMap::new(),
            permits: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// A place for a connection from `remote`, or why there is none.
    pub fn take(self: &Arc<Self>, remote: IpAddr) -> Result<ConnSlot, &'static str> {
        self.take_key(limit_key(remote))
    }

    fn take_key(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| "listener is at max_connections")?;
        let mut n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err("address is at max_connections_per_ip");
        }
        *n += 1;
        drop(n);
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
            _permit: permit,
        })
    }
}

/// Holds a connection's place in the listener and per-IP limits until dropped; a WebSocket
/// session keeps it after the upgrade, when hyper's connection task has already ended.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl ConnSlot {
    /// Another place for the same address in the same listener: a long-polling session
    /// holds one of its own from its open packet to its end, like a WebSocket connection,
    /// whatever HTTP connections carry its requests.
    pub fn another(&self) -> Result<ConnSlot, &'static str> {
        self.limits.take_key(self.ip)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let per_ip = &self.limits.per_ip;
        if let Some(mut n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        per_ip.remove_if(&self.ip, |_, n| *n == 0);
    }
}

/// Who is at the other end of a connection, as the sessions need it.
#[derive(Clone)]
pub struct Peer {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The connection's place in the listener's limits.
    pub slot: Arc<ConnSlot>,
}

/// The address a connection counts against for `max_connections_per_ip`: the IPv4
/// address, or the IPv6 /64 (one subscriber usually holds a whole /64).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A clear answer for a connection over the limits, then close.
pub async fn refuse(mut stream: TcpStream, why: &'static str) {
    let body = format!("{why}\n");
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(resp.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_group_ipv6_by_64() {
        let k = |s: &str| limit_key(s.parse().unwrap()).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::");
        assert_eq!(k("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(k("127.0.0.2"), "127.0.0.2");
    }
}
