//! The `relay` binary: `check` with broken configs, `certs dev`, and `serve`
//! shutting down gracefully on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{relay, serve_in, serve_in_with_log, ws_texts};

fn check(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    let out = relay()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run relay check");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

const TENANT: &str = "[[tenant]]\nname = \"t\"\npolicy = \"open\"\n";

#[test]
fn check_warns_of_a_public_listener_open_to_any_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = |bind: &str, extra: &str| {
        format!("{TENANT}[[listener]]\nname = \"l\"\nkind = \"ws\"\nbind = \"{bind}\"\n{extra}routes = [{{ path = \"/\", tenant = \"t\" }}]\n")
    };
    let (ok, out) = check(dir.path(), "public.toml", &listener("0.0.0.0:0", ""));
    assert!(ok, "a warning, not an error: {out}");
    assert!(
        out.contains(
            "warning: listener \"l\" on 0.0.0.0:0 accepts connections from any browser Origin"
        ),
        "{out}"
    );
    for (name, text) in [
        (
            "listed.toml",
            listener("0.0.0.0:0", "allowed_origins = [\"https://app.example\"]\n"),
        ),
        ("loopback.toml", listener("127.0.0.1:0", "")),
    ] {
        let (ok, out) = check(dir.path(), name, &text);
        assert!(ok && !out.contains("warning"), "{name}: {out}");
    }
}

#[test]
fn check_reports_file_line_and_key_for_broken_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, String, &str)] = &[
        ("syntax.toml", "[[tenant]\nname = \"t\"\n".into(), "syntax.toml:1:"),
        ("unknown.toml", format!("{TENANT}colour = \"blue\"\n"), "unknown field `colour`"),
        (
            "bind.toml",
            format!("{TENANT}[[listener]]\nname = \"l\"\nkind = \"ws\"\nbind = \"localhost\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "bind.toml:7: listener[0].bind:",
        ),
        (
            "route.toml",
            format!("{TENANT}[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"nobody\" }}]\n"),
            "listener[0].routes[0].tenant: no tenant named \"nobody\"",
        ),
        (
            "wss.toml",
            format!("{TENANT}[[listener]]\nname = \"l\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "needs either `cert` and `key`",
        ),
        (
            "certfile.toml",
            format!("{TENANT}[[listener]]\nname = \"l\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\ncert = \"missing.pem\"\nkey = \"missing-key.pem\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "certfile.toml:8: listener[0].cert: tls: cannot read certificate",
        ),
        ("policy.toml", "[[tenant]]\nname = \"t\"\npolicy = \"magic\"\n".into(), "policy.toml:3: tenant[0].policy: unknown policy \"magic\""),
        ("empty.toml", TENANT.into(), "at least one [[listener]]"),
        (
            "hook.toml",
            format!("{TENANT}login_webhook = \"/relative\"\n[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "hook.toml:4: tenant[0].login_webhook: webhook URL /relative must be absolute",
        ),
        (
            "sio.toml",
            format!("{TENANT}profile = \"socket.io\"\nnamespaces = [\"chat\"]\n[[listener]]\nname = \"l\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "tenant[0].namespaces: \"chat\": a namespace starts with '/'",
        ),
        (
            "sync.toml",
            format!("[server]\nsync = \"sometimes\"\n{TENANT}"),
            "sync.toml:2",
        ),
        ("udp.toml", format!("{TENANT}[[listener]]\nname = \"u\"\nkind = \"udp\"\nbind = \"127.0.0.1:0\"\n"), "a udp listener needs `tenant`"),
        (
            "setting.toml",
            format!("{TENANT}settings = {{ require_logn = true }}\n[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "setting.toml:4: tenant[0].settings: open policy: unknown or mistyped setting \"require_logn\"",
        ),
        (
            "redis.toml",
            format!("[cluster]\nredis = \"redis://127.0.0.1:1/0\"\n{TENANT}[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "redis.toml:2: cluster.redis: cannot reach redis",
        ),
        (
            "tlsplain.toml",
            format!("[cluster]\nredis = \"redis://127.0.0.1:1/0\"\ntls_ca = \"ca.pem\"\ntls_cert = \"c.pem\"\n{TENANT}"),
            "tlsplain.toml:3: cluster.tls_ca: only with a rediss:// URL",
        ),
        (
            "tlspair.toml",
            format!("[cluster]\nredis = \"rediss://127.0.0.1:1/0\"\ntls_cert = \"c.pem\"\n{TENANT}"),
            "cluster.tls_cert: tls_cert and tls_key go together",
        ),
        (
            "tlsfile.toml",
            format!("[cluster]\nredis = \"rediss://127.0.0.1:1/0\"\ntls_ca = \"missing-ca.pem\"\n{TENANT}[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n"),
            "tlsfile.toml:3: cluster.tls_ca: cannot read",
        ),
        (
            "ingress.toml",
            format!("{TENANT}redis_ingress = [{{ channel = \"c\" }}]\n"),
            "ingress.toml:4: tenant[0].redis_ingress[0]: needs a [cluster]",
        ),
    ];
    for (name, text, expected) in cases {
        let (ok, out) = check(dir.path(), name, text);
        assert!(!ok, "{name} should be rejected");
        assert!(
            out.contains(expected),
            "{name}: expected {expected:?} in:\n{out}"
        );
    }
    let (ok, out) = check(dir.path(), "missing.toml", "");
    assert!(!ok && out.contains("listener"), "{out}");
    let out = relay()
        .args(["check", "--config", "/nonexistent/relay.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn check_accepts_the_examples() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in [examples.clone(), examples.join("seeds")] {
        for e in std::fs::read_dir(&dir).expect("examples/") {
            files.push(e.expect("entry").path());
        }
    }
    for p in files {
        if p.extension().is_some_and(|x| x == "toml") {
            let out = relay()
                .arg("check")
                .arg("--config")
                .arg(&p)
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n > 0, "no example configs found");
}

#[test]
fn certs_dev_writes_a_ca_and_a_server_pair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = relay()
        .args(["certs", "dev", "--out"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let text = std::fs::read_to_string(dir.path().join(f)).expect(f);
        assert!(text.contains("-----BEGIN"), "{f} is PEM");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );
    }
}

/// `relay serve` on a config written to a temp dir, with its log lines on a channel.
struct Served {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// `tenant` is the `[[tenant]]` table; one http listener on a free port serves it.
    fn start(tenant: &str) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\ndata_dir = {:?}\n{tenant}[[listener]]\nname = \"l\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n",
                dir.path().display().to_string()
            ),
        )
        .expect("write config");
        let (child, lines) = common::serve(&cfg);
        Served {
            child,
            lines,
            _dir: dir,
        }
    }

    /// The first log line containing `what`, within 60 s.
    fn wait_for(&self, what: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(what) => return Some(line),
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut relay = Served::start(TENANT);
    let line = relay.wait_for("listening").expect("relay did not start");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok\n"),
        "{resp}"
    );

    relay.signal("-TERM");
    assert!(
        relay.wait_for("shutting down").is_some(),
        "no shutdown logged"
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = relay.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "relay did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sighup_reloads_plugins() {
    let relay = Served::start("[[tenant]]\nname = \"t\"\npolicy = \"wasm\"\nplugin = \"bundled:testkit\"\nplugin_watch_ms = 0\n");
    assert!(relay.wait_for("listening").is_some(), "relay did not start");
    relay.signal("-HUP");
    assert!(
        relay.wait_for("SIGHUP: plugins reloaded").is_some(),
        "no reload logged after SIGHUP"
    );
}

/// One blocking HTTP GET (`connection: close`); the status line's code.
fn get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn acknowledged_offline_messages_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("relay.toml"),
        format!(
            "[server]\ndata_dir = {:?}\nsync = \"batch\"\n{TENANT}offline_max = 100000\n\
             [[listener]]\nname = \"h\"\nkind = \"http\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n\
             [[listener]]\nname = \"w\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n",
            dir.path().display().to_string()
        ),
    )
    .expect("config");
    let (mut child, addrs) = serve_in(dir.path(), &["h", "w"]);
    let http = addrs[0].clone();
    // Four backends push offline messages for `ann` as fast as acknowledgements come.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pushers: Vec<_> = (0..4)
        .map(|_| {
            let (acked, next, http) = (acked.clone(), next.clone(), http.clone());
            std::thread::spawn(move || loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match get_status(&http, &format!("/push?user=ann&offline=1&data={n}")) {
                    Some(200) => acked.lock().expect("lock").push(n),
                    Some(other) => panic!("push {n} answered {other}"),
                    None => return, // the relay is gone
                }
            })
        })
        .collect();
    let start = Instant::now();
    while acked.lock().expect("lock").len() < 300 {
        assert!(start.elapsed() < Duration::from_secs(60), "pushes too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL"); // std's kill sends SIGKILL
    child.wait().expect("reap");
    for p in pushers {
        p.join().expect("pusher");
    }
    let acked: Vec<usize> = acked.lock().expect("lock").clone();

    let (mut child, addrs) = serve_in(dir.path(), &["h", "w"]);
    let texts = ws_texts(&addrs[1], "/?user=ann", Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    let mut got = Vec::new();
    for t in &texts {
        let v: serde_json::Value = serde_json::from_str(t).expect("json");
        assert_eq!(v["offline"], true, "{t}");
        got.push(
            v["data"]
                .as_str()
                .and_then(|d| d.parse::<usize>().ok())
                .expect("n"),
        );
    }
    let unique: std::collections::HashSet<usize> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no message delivered twice");
    let missing: Vec<&usize> = acked.iter().filter(|n| !unique.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // Each pusher's messages arrive in the order they were stored.
    assert!(got.len() >= acked.len());
}

#[test]
fn a_plugin_asking_for_a_header_it_did_not_declare_is_logged_once_per_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    // testkit declares host, origin and x-token; `?header=NAME` makes its handshake hook
    // ask the host for NAME.
    std::fs::write(
        dir.path().join("relay.toml"),
        format!(
            "[server]\ndata_dir = {:?}\n\
             [[tenant]]\nname = \"t\"\npolicy = \"wasm\"\nplugin = \"bundled:testkit\"\n\
             [[listener]]\nname = \"w\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nroutes = [{{ path = \"/\", tenant = \"t\" }}]\n",
            dir.path().display().to_string()
        ),
    )
    .expect("config");
    let (mut child, addrs, lines) = serve_in_with_log(dir.path(), &["w"]);
    for path in [
        "/?user=u&header=x-api-key",
        "/?user=u&header=x-api-key",
        "/?user=u&header=x-token",
        "/?user=u&header=X-Api-Key",
    ] {
        ws_texts(&addrs[0], path, Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let warned: Vec<String> = lines
        .try_iter()
        .filter(|l| l.contains("asked for a request header"))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("x-api-key"), "{warned:?}");
}

#[test]
fn plugin_check_loads_one_component_without_a_config() {
    let run = |args: &[&str]| {
        let out = relay().args(args).output().expect("run relay");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["plugin", "check", "bundled:testkit"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("hooks    on-handshake, on-event, on-ingress\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("headers  host, origin, x-token\n"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&[
        "plugin",
        "check",
        "bundled:md5-sign",
        "--settings",
        r#"{"key": "k"}"#,
    ]);
    assert!(ok && stdout.contains("headers  none\n"), "{stdout}");
    // Settings its init refuses, settings that are not JSON, a file that is no component,
    // and a component that imports what relay does not provide.
    let (ok, _, stderr) = run(&[
        "plugin",
        "check",
        "bundled:testkit",
        "--settings",
        r#"{"fail_init": true}"#,
    ]);
    assert!(
        !ok && stderr.contains("init refused the settings"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["plugin", "check", "bundled:testkit", "--settings", "nope"]);
    assert!(
        !ok && stderr.contains("--settings must be a JSON object"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let (ok, _, stderr) = run(&["plugin", "check", junk.to_str().expect("path")]);
    assert!(!ok && stderr.contains("not a valid component"), "{stderr}");
    let (ok, _, stderr) = run(&["plugin", "check", "bundled:fs-intruder"]);
    assert!(!ok && stderr.contains("wasi:filesystem"), "{stderr}");
}
