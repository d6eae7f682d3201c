//! Backend ingress: HTTP push requests and UDP datagrams, each handed to the
//! tenant's policy and turned into actions.

pub mod http;
pub mod redis;
pub mod udp;
