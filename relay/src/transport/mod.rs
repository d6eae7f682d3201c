//! Listeners: TCP accept loops with connection limits, TLS, and the hyper
//! service that routes each request to a WebSocket session or to ingress.

pub mod http;
pub mod tls;
