//! Building what a configuration names, once: tenants (policies, plugins), TLS
//! acceptors, webhook URLs. Every failure is a [`ConfigError`] at the key that named
//! the thing, and every one is reported, not only the first.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::cluster::sync::ClusterSync;
use crate::config::{
    Config, ConfigError, ConfigErrors, ListenerConfig, ListenerKind, TenantConfig,
};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::store::KvStore;
use crate::tenant::{Tenant, TenantDeps, TenantError};
use crate::transport::tls;

/// Gives a tenant its key-value store.
pub(super) type KvFactory<'a> = dyn Fn(&TenantConfig) -> Result<Arc<dyn KvStore>, Error> + 'a;

/// Where a tenant's `plugin` value points: `bundled:<name>` or a path relative to the
/// config file.
pub(super) fn plugin_path(config: &Config, plugin: &str) -> PathBuf {
    match plugin.strip_prefix("bundled:") {
        Some(name) => crate::plugin::bundled(name),
        None => config.resolve(Path::new(plugin)),
    }
}

/// Build every tenant (loading, compiling and initialising WASM plugins); `kv_for`
/// gives each tenant its key-value store.
pub(super) fn tenants(
    config: &Config,
    metrics: &Arc<Metrics>,
    kv_for: &KvFactory<'_>,
    cluster: Option<&Arc<ClusterSync>>,
) -> Result<HashMap<String, Arc<Tenant>>, Error> {
    let mut tenants = HashMap::new();
    let mut errors = Vec::new();
    for (i, t) in config.tenants.iter().enumerate() {
        match tenant(config, i, t, metrics, kv_for, cluster) {
            Ok(tenant) => {
                tenants.insert(t.name.get_ref().clone(), Arc::new(tenant));
            }
            Err(Some(e)) => errors.push(e),
            Err(None) => {}
        }
        webhook_urls(config, i, t, &mut errors);
    }
    match errors.is_empty() {
        true => Ok(tenants),
        false => Err(ConfigErrors(errors).into()),
    }
}

/// One tenant; `Err(None)` when the key-value store failed (reported on its own).
fn tenant(
    config: &Config,
    i: usize,
    t: &TenantConfig,
    metrics: &Arc<Metrics>,
    kv_for: &KvFactory<'_>,
    cluster: Option<&Arc<ClusterSync>>,
) -> Result<Tenant, Option<ConfigError>> {
    let key = |f: &str| format!("tenant[{i}].{f}");
    let plugin_path = match &t.plugin {
        Some(p) => {
            let path = plugin_path(config, p.get_ref());
            if !path.is_file() {
                let msg = format!("no plugin file at {}", path.display());
                return Err(Some(config.error_at(Some(p.span()), key("plugin"), msg)));
            }
            Some(path)
        }
        None => None,
    };
    let kv = kv_for(t).map_err(|e| {
        tracing::error!(tenant = %t.name.get_ref(), error = %e, "cannot open the tenant's store");
        Some(config.error_at(Some(t.name.span()), key("name"), format!("store: {e}")))
    })?;
    let deps = TenantDeps {
        cache_dir: config.data_dir().join("plugin-cache"),
        plugin_path,
        kv,
        log_dir: config.log_dir(t),
        metrics: metrics.clone(),
        cluster: cluster.cloned(),
    };
    Tenant::new(t.clone(), deps).map_err(|e| {
        let (span, field) = match &e {
            TenantError::Settings(_) => (
                t.settings.as_ref().map_or(t.policy.span(), |s| s.span()),
                "settings",
            ),
            TenantError::Plugin(_) | TenantError::NoPlugin => (
                t.plugin.as_ref().map_or(t.policy.span(), |p| p.span()),
                "plugin",
            ),
            TenantError::Notice(_) => (
                t.auth_timeout_notice
                    .as_ref()
                    .map_or(t.name.span(), |n| n.span()),
                "auth_timeout_notice",
            ),
        };
        Some(config.error_at(Some(span), key(field), e.to_string()))
    })
}

/// A webhook URL must be one relay can call: absolute http(s).
fn webhook_urls(config: &Config, i: usize, t: &TenantConfig, errors: &mut Vec<ConfigError>) {
    for (field, url) in [
        ("login_webhook", &t.login_webhook),
        ("disconnect_webhook", &t.disconnect_webhook),
    ] {
        let Some(u) = url else { continue };
        let call = crate::webhook::Call::new(
            "check".into(),
            "GET",
            u.get_ref(),
            vec![],
            Default::default(),
            Default::default(),
            0,
        );
        if let Err(e) = call {
            let key = format!("tenant[{i}].{field}");
            errors.push(config.error_at(Some(u.span()), key, e.to_string()));
        }
    }
}

/// The TLS acceptor of the `i`-th listener (`None` unless it is wss): its certificate
/// files, or the development certificate in `<data_dir>/dev-certs` (generated once).
pub(super) fn tls_acceptor(
    config: &Config,
    i: usize,
    l: &ListenerConfig,
) -> Result<Option<TlsAcceptor>, ConfigError> {
    if l.kind != ListenerKind::Wss {
        return Ok(None);
    }
    let at = |span, e: tls::TlsError| {
        config.error_at(
            Some(span),
            format!("listener[{i}].cert"),
            format!("tls: {e}"),
        )
    };
    let (cert, key, span) = match (&l.cert, &l.key) {
        (Some(c), Some(k)) => (
            config.resolve(c.get_ref()),
            config.resolve(k.get_ref()),
            c.span(),
        ),
        _ => {
            let d = tls::ensure_dev_certs(&config.data_dir().join("dev-certs"), false)
                .map_err(|e| at(l.name.span(), e))?;
            (d.cert, d.key, l.name.span())
        }
    };
    let server = tls::load_server_config(&cert, &key).map_err(|e| at(span, e))?;
    Ok(Some(TlsAcceptor::from(server)))
}

/// Every wss listener's acceptor, by listener index; all failures reported.
pub(super) fn tls_acceptors(config: &Config) -> Result<HashMap<usize, TlsAcceptor>, ConfigErrors> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        match tls_acceptor(config, i, l) {
            Ok(Some(a)) => {
                out.insert(i, a);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    match errors.is_empty() {
        true => Ok(out),
        false => Err(ConfigErrors(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn building_reports_every_failure_at_its_key() {
        let text = "[[tenant]]\nname = \"a\"\npolicy = \"open\"\nsettings = { require_logn = true }\n\n[[tenant]]\nname = \"b\"\npolicy = \"open\"\nlogin_webhook = \"/relative\"\n\n[[listener]]\nname = \"l\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\nroutes = [{ path = \"/\", tenant = \"a\" }]\n";
        let config = Config::parse(text, Some(Path::new("x.toml"))).unwrap();
        let Err(Error::Config(all)) = crate::server::check(&config) else {
            panic!("expected configuration errors");
        };
        let found: Vec<(&str, Option<usize>)> =
            all.0.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            found,
            [
                ("listener[0].cert", Some(15)),
                ("tenant[0].settings", Some(4)),
                ("tenant[1].login_webhook", Some(9)),
            ],
            "{all}"
        );
    }
}
