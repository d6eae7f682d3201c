//! The test plugin relay's end-to-end tests load. It behaves like a small
//! chat policy and misbehaves on request, so the sandbox can be proven:
//!
//! - handshake: `?user=u` accepts as `u` (joining `?rooms=a,b`); `?reject=1`
//!   rejects with 403; `?defer=1` defers to a `login` event; `?trap=1` panics;
//!   `?headers=1`, `?header=NAME` and `?whoami=1` answer what the plugin sees of the
//!   request in `x-seen-headers`, `x-seen-header` and `x-seen-request` response headers.
//! - events (`{"event": ...}`): `echo`, `whoami`, `login`, `emit` (to `room`),
//!   `kv-set`/`kv-get`/`kv-once`/`kv-incr`/`kv-cas-incr`, `now`, `random`, `version`, `join-other`,
//!   `leave-other` and `close-other` (`{conn, room}`: act on another connection, which
//!   may live on another node of a cluster), and the misbehaviours
//!   `trap`, `loop`, `alloc` (`mb` megabytes), `bad-json`, `print`.
//! - ingress: `POST /push` `{"room","data"}`; `GET /version`.
//! - settings: `{"version": "..."}` is reported by `version`; `{"fail_init": true}` fails init.

use relay_plugin_sdk::serde_json::{json, Value};
use relay_plugin_sdk::*;
use std::sync::OnceLock;

static VERSION: OnceLock<String> = OnceLock::new();

struct Testkit;

fn version() -> String {
    VERSION.get().cloned().unwrap_or_default()
}

#[relay_plugin_sdk::plugin(headers = ["host", "origin", "x-token"])]
impl Plugin for Testkit {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        if v["fail_init"] == json!(true) {
            return Err("init failed as asked (fail_init)".into());
        }
        let _ = VERSION.set(v["version"].as_str().unwrap_or("1").to_owned());
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let query = req.query();
        if query_param(query, "trap").is_some() {
            panic!("trap in handshake, as asked");
        }
        if query_param(query, "reject").is_some() {
            return Ok(HandshakeDecision::Reject(Reject {
                status: 403,
                headers: vec![Pair {
                    name: "message".into(),
                    value: "error auth".into(),
                }],
                body: String::new(),
                actions: Vec::new(),
            }));
        }
        if query_param(query, "defer").is_some() {
            return Ok(HandshakeDecision::Defer(vec![reply(
                &json!({"event": "hello", "login": "required"}),
            )]));
        }
        let rooms = query_param(query, "rooms")
            .map(|r| {
                r.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // Socket.IO clients may name their user in the CONNECT packet's auth payload.
        let auth: Value = parse_json(req.auth().as_deref());
        let user = query_param(query, "user").or_else(|| auth["user"].as_str().map(str::to_owned));
        let mut decision = accept(user, rooms);
        if let HandshakeDecision::Accept(a) = &mut decision {
            a.headers.push(Pair {
                name: "x-plugin-version".into(),
                value: version(),
            });
            if query_param(query, "headers").is_some() {
                let names: Vec<String> = req.headers().into_iter().map(|h| h.name).collect();
                a.headers.push(Pair {
                    name: "x-seen-headers".into(),
                    value: names.join(","),
                });
            }
            // `?header=NAME`: that one header's value as the plugin sees it, or `-`.
            if let Some(name) = query_param(query, "header") {
                a.headers.push(Pair {
                    name: "x-seen-header".into(),
                    value: req.header(&name).unwrap_or_else(|| "-".into()),
                });
            }
            if query_param(query, "whoami").is_some() {
                a.headers.push(Pair {
                    name: "x-seen-request".into(),
                    value: format!(
                        "conn={} path={} remote={} tls={}",
                        req.conn(),
                        req.path(),
                        req.remote(),
                        req.tls()
                    ),
                });
            }
            if let Some(nsp) = &req.namespace() {
                a.actions.push(reply(
                    &json!({"event": "welcome", "namespace": nsp, "auth": auth}),
                ));
            }
        }
        Ok(decision)
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let data: Value = parse_json(ev.data.as_deref());
        let s = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        Ok(match ev.name.as_deref().unwrap_or_default() {
            "echo" => vec![reply(
                &json!({"event": "echo", "text": ev.text, "namespace": ev.namespace}),
            )],
            "whoami" => vec![reply(
                &json!({"event": "whoami", "conn": conn.id, "user": conn.user, "authenticated": conn.authenticated}),
            )],
            "login" => vec![
                identify(&s("user")),
                reply(&json!({"event": "login", "ok": true})),
            ],
            "emit" => vec![emit(
                Target::Rooms(vec![s("room")]),
                &json!({"event": "message", "data": data["data"]}),
            )],
            "version" => vec![reply(&json!({"event": "version", "version": version()}))],
            "join-other" => vec![Action::Join(Membership {
                rooms: vec![s("room")],
                conn: Some(s("conn")),
            })],
            "leave-other" => vec![Action::Leave(Membership {
                rooms: vec![s("room")],
                conn: Some(s("conn")),
            })],
            "close-other" => vec![Action::Close(Close {
                code: 4000,
                reason: "closed by another connection".into(),
                conn: Some(s("conn")),
            })],
            "kv-set" => {
                host::kv_set(
                    &s("key"),
                    s("value").as_bytes(),
                    data["ttl"].as_u64().map(|t| t as u32),
                );
                vec![reply(&json!({"event": "kv-set", "ok": true}))]
            }
            "kv-get" => {
                let v = host::kv_get(&s("key")).map(|b| String::from_utf8_lossy(&b).into_owned());
                vec![reply(&json!({"event": "kv-get", "value": v}))]
            }
            "kv-incr" => {
                let by = data["by"].as_i64().unwrap_or(1);
                match host::kv_incr(&s("key"), by, None) {
                    Ok(n) => vec![reply(&json!({"event": "kv-incr", "value": n}))],
                    Err(e) => vec![reply(&json!({"event": "kv-incr", "error": e}))],
                }
            }
            "kv-cas-incr" => {
                // A counter by read, compute, compare-and-swap, retried on a race.
                let key = s("key");
                let n = loop {
                    let old = host::kv_get(&key);
                    let cur: i64 = old
                        .as_deref()
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let next = (cur + 1).to_string();
                    if host::kv_compare_and_swap(&key, old.as_deref(), Some(next.as_bytes()), None)
                    {
                        break cur + 1;
                    }
                };
                vec![reply(&json!({"event": "kv-cas-incr", "value": n}))]
            }
            "kv-once" => {
                let fresh = host::kv_set_if_absent(&s("key"), b"1", Some(60));
                vec![reply(&json!({"event": "kv-once", "fresh": fresh}))]
            }
            "now" => vec![reply(&json!({"event": "now", "ms": host::now_ms()}))],
            "count" => {
                // std's HashMap (its hasher is seeded through wasi:random/insecure-seed).
                let text = s("text");
                let mut words: std::collections::HashMap<&str, u32> = Default::default();
                for w in text.split_whitespace() {
                    *words.entry(w).or_default() += 1;
                }
                let mut counts: Vec<(&str, u32)> = words.into_iter().collect();
                counts.sort();
                vec![reply(&json!({"event": "count", "words": counts}))]
            }
            "webhook" => vec![
                Action::Webhook(Webhook {
                    method: s("method"),
                    url: s("url"),
                    headers: vec![Pair {
                        name: "x-from".into(),
                        value: "testkit".into(),
                    }],
                    body: s("body"),
                }),
                reply(&json!({"event": "webhook", "queued": true})),
            ],
            "log" => vec![
                append_log(&s("file"), &s("line")),
                reply(&json!({"event": "log"})),
            ],
            "keep" => vec![keep_for_user(
                &s("user"),
                &json!({"event": "kept", "data": data["data"], "is_online": false}),
            )],
            "random" => vec![reply(
                &json!({"event": "random", "bytes": host::random_bytes(16)}),
            )],
            "presence" => vec![reply(
                &json!({"event": "presence", "count": host::room_count(&s("room"))}),
            )],
            "print" => {
                println!("hello from the plugin's stdout");
                eprintln!("hello from the plugin's stderr");
                vec![reply(&json!({"event": "print"}))]
            }
            "trap" => panic!("trap in on-event, as asked"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mb = data["mb"].as_u64().unwrap_or(64) as usize;
                let v = vec![1u8; mb << 20];
                vec![reply(
                    &json!({"event": "alloc", "len": std::hint::black_box(v).len()}),
                )]
            }
            "bad-json" => vec![Action::Reply(Message {
                event: None,
                data: "{not json".into(),
                ack: None,
                spread: false,
            })],
            other => vec![reply(
                &json!({"event": "error", "error": format!("unknown event {other:?}")}),
            )],
        })
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        let path = match &req.source {
            IngressSource::Http(h) => h.path.clone(),
            IngressSource::Udp => "/push".into(),
        };
        match path.as_str() {
            "/push" => {
                let v: Value =
                    serde_json::from_slice(&req.body).map_err(|e| format!("body: {e}"))?;
                let room = v["room"].as_str().unwrap_or_default().to_owned();
                let online = host::room_count(&room);
                Ok(respond(
                    200,
                    &json!({"ok": true, "online": online}),
                    vec![emit(
                        Target::Rooms(vec![room]),
                        &json!({"event": "message", "data": v["data"]}),
                    )],
                ))
            }
            "/version" => Ok(respond(200, &json!({"version": version()}), vec![])),
            _ => Ok(respond(404, &json!({"error": "not found"}), vec![])),
        }
    }
}
