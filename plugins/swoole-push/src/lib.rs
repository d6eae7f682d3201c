//! Seed 001 (swoole WebSocket push with UDP ingress) as a relay plugin, on ws-json.
//! See `docs/migrating.md`.
//!
//! - **Tokens**: the backend registers a user's login token per source with
//!   `POST /token` (form or JSON `uid`, `source`, `token`, `sk`), kept in the tenant's
//!   key-value store (the original read Redis `login<uid>`).
//! - **Handshake**: `?access_token=` = base64 of `uid.token.source` in the `-_,`
//!   alphabet; accepted when any registered source of that uid has that token (that
//!   stored source becomes the connection's). `token` = device token. A second device on
//!   the same uid+source kicks the first (code 441).
//! - **Chat**: `{"to_uid","type":"chat","content"}` goes to every device of `to_uid`
//!   with `uid`, `time`, `state`, `id`; users offline get it at their next login
//!   (`state: 0`).
//! - **UDP** (and `GET|POST /chat/send`): `{"sk","means","data"}` with `means`
//!   `to_uid`, `to_uid_all`, `to_fd`, `to_fd_all`, `is_on_line`; replies `{"onLine":n}`.
//!   Loopback senders are trusted; others need a `udpsocket_group` entry (ip + sk).
//!
//! Settings: `api_key` (for `/token`), `actions` (default `["chat"]`),
//! `udpsocket_group = [{ ip, secret_key }]`, `login_source` (`"kv"`, default: tokens
//! from `POST /token`; `"redis"`: from the original's Redis hash `login<uid>`, whose
//! fields are sources and values `{"uid","token","expires"}` JSON, read through the
//! tenant's `redis_read = ["login*"]` in cluster mode).

use relay_plugin_sdk::serde_json::{json, Map, Value};
use relay_plugin_sdk::*;
use std::cell::Cell;
use std::sync::OnceLock;

struct Settings {
    /// Read tokens from the original's Redis hash `login<uid>` (cluster mode, with the
    /// tenant's `redis_read = ["login*"]`) instead of `POST /token`'s store.
    redis_logins: bool,
    api_key: String,
    actions: Vec<String>,
    group: Vec<(String, String)>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

thread_local! {
    /// (second, counter) for message ids: seconds × 10000 + counter.
    static ID: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

struct SwoolePush;

fn cfg() -> Result<&'static Settings, String> {
    SETTINGS.get().ok_or_else(|| "not initialised".to_owned())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn now_secs() -> u64 {
    host::now_ms() / 1000
}

/// `unix_seconds × 10000 + per-second counter`, as the original's ids.
fn next_id() -> u64 {
    let s = now_secs();
    ID.with(|c| {
        let (sec, n) = c.get();
        let n = if sec == s { n + 1 } else { 0 };
        c.set((s, n));
        s * 10_000 + n.min(9_999)
    })
}

/// `uid.token.source` from an access token in the `-_,` alphabet (padding optional).
pub fn decode_access_token(t: &str) -> Option<(String, String, String)> {
    let raw = String::from_utf8(encoding::base64_decode(t, ['-', '_', ','])?).ok()?;
    let mut parts = raw.splitn(3, '.');
    let (uid, token, source) = (parts.next()?, parts.next()?, parts.next()?);
    (!uid.is_empty() && !token.is_empty())
        .then(|| (uid.to_owned(), token.to_owned(), source.to_owned()))
}

/// A uid's login tokens by source: `{source: {uid, token, expires}}`.
fn logins(uid: &str) -> Map<String, Value> {
    if SETTINGS.get().is_some_and(|s| s.redis_logins) {
        // The original's hash: each field a source, each value that entry's JSON.
        let hash: Map<String, Value> = host::kv_get(&format!("redis:login{uid}"))
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        return hash
            .into_iter()
            .filter_map(|(source, v)| {
                let entry = serde_json::from_str::<Value>(v.as_str()?).ok()?;
                Some((source, entry))
            })
            .collect();
    }
    host::kv_get(&format!("login:{uid}"))
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn frame(message: &str, code: u16, data: Value) -> Value {
    json!({"message": message, "type": "login", "code": code, "data": data})
}

/// Deliver a chat object to every device of `to_uid`, or keep it for their next login.
fn deliver(from_uid: Option<&str>, mut msg: Map<String, Value>) -> (bool, Vec<Action>) {
    let to = text(&msg.get("to_uid").cloned().unwrap_or(Value::Null));
    if let Some(u) = from_uid {
        msg.insert("uid".into(), json!(u));
    }
    msg.entry("time")
        .or_insert_with(|| json!(now_secs().to_string()));
    msg.insert("id".into(), json!(next_id()));
    let online = !to.is_empty() && !host::user_connections(&to).is_empty();
    msg.insert("state".into(), json!(u8::from(online)));
    if to.is_empty() {
        return (false, Vec::new());
    }
    let action = if online {
        emit(Target::User(to), &Value::Object(msg))
    } else {
        keep_for_user(&to, &Value::Object(msg))
    };
    (online, vec![action])
}

/// Whether a backend at `ip` with secret `sk` may push: loopback, or a group entry.
fn trusted(cfg: &Settings, remote: &str, sk: &Value) -> bool {
    let ip = remote
        .rsplit_once(':')
        .map_or(remote, |(ip, _)| ip)
        .trim_matches(['[', ']']);
    if ip == "127.0.0.1" || ip == "::1" {
        return true;
    }
    let Value::String(sk) = sk else { return false };
    cfg.group.iter().any(|(gip, key)| gip == ip && key == sk)
}

/// The UDP/`/chat/send` command: reply body and actions.
fn command(v: &Value) -> (Value, Vec<Action>) {
    let data = v["data"].as_object().cloned().unwrap_or_default();
    let ids = |k: &str| -> Vec<String> {
        data.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default()
    };
    let with_id = |d: &Map<String, Value>| {
        let mut d = d.clone();
        d.insert("id".into(), json!(next_id()));
        d.insert("state".into(), json!(1));
        Value::Object(d)
    };
    match v["means"].as_str().unwrap_or("to_uid") {
        "to_uid" => {
            let (online, actions) = deliver(None, data);
            (json!({"onLine": u8::from(online)}), actions)
        }
        "is_on_line" => {
            let to = text(&data.get("to_uid").cloned().unwrap_or(Value::Null));
            let online = !to.is_empty() && !host::user_connections(&to).is_empty();
            (json!({"onLine": u8::from(online)}), Vec::new())
        }
        "to_uid_all" => {
            let uids = ids("uid_all");
            let actions = if uids.is_empty() {
                vec![emit(Target::Tenant, &with_id(&data))]
            } else {
                uids.into_iter()
                    .map(|u| emit(Target::User(u), &with_id(&data)))
                    .collect()
            };
            (json!({"onLine": null}), actions)
        }
        "to_fd" => {
            let fd = text(&data.get("to_fd").cloned().unwrap_or(Value::Null));
            let online = !fd.is_empty() && host::connection_exists(&fd);
            (
                json!({"onLine": u8::from(online)}),
                vec![emit(Target::Connection(fd), &with_id(&data))],
            )
        }
        "to_fd_all" => {
            let fds = ids("fd_all");
            let actions = if fds.is_empty() {
                vec![emit(Target::Tenant, &with_id(&data))]
            } else {
                fds.into_iter()
                    .map(|f| emit(Target::Connection(f), &with_id(&data)))
                    .collect()
            };
            (json!({"onLine": null}), actions)
        }
        _ => (json!({"onLine": 0}), Vec::new()),
    }
}

fn out(status: u16, body: &Value, actions: Vec<Action>) -> IngressOutcome {
    respond(status, body, actions)
}

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for SwoolePush {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let api_key = v["api_key"]
            .as_str()
            .filter(|k| !k.is_empty())
            .ok_or("settings.api_key (for POST /token) is required")?
            .to_owned();
        let actions = v["actions"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_else(|| vec!["chat".to_owned()]);
        let group = v["udpsocket_group"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| (text(&g["ip"]), text(&g["secret_key"])))
                    .collect()
            })
            .unwrap_or_default();
        let redis_logins = match v["login_source"].as_str() {
            None | Some("kv") => false,
            Some("redis") => true,
            Some(other) => {
                return Err(format!(
                    "settings.login_source: {other:?} is not \"kv\" or \"redis\""
                ))
            }
        };
        let _ = SETTINGS.set(Settings {
            redis_logins,
            api_key,
            actions,
            group,
        });
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let query = req.query();
        if query.is_empty() {
            return Ok(reject(400, "")); // no query: closed without a word
        }
        let refused = || {
            HandshakeDecision::Defer(vec![
                reply(&json!({"message": "授权失败", "code": 401, "data": []})),
                close(1000, ""),
            ])
        };
        let Some((uid, token, _source)) =
            query_param(query, "access_token").and_then(|t| decode_access_token(&t))
        else {
            return Ok(refused());
        };
        let Some(source) = logins(&uid)
            .iter()
            .find(|(_, e)| text(&e["token"]) == token)
            .map(|(s, _)| s.clone())
        else {
            return Ok(refused());
        };
        let device = query_param(query, "token")
            .filter(|t| t.chars().count() >= 10)
            .unwrap_or_else(|| sign::md5_hex(&host::random_bytes(16)));
        // One connection per uid + source: a different device kicks the one before.
        let slot = format!("online:{uid}:{source}");
        let mut actions = Vec::new();
        let mut message = "授权成功";
        if let Some(prev) = host::kv_get(&slot).and_then(|b| String::from_utf8(b).ok()) {
            if let Some((old, old_device)) = prev.split_once('|') {
                if old_device != device && host::connection_exists(old) {
                    actions.push(emit(
                        Target::Connection(old.to_owned()),
                        &frame("该账号已在别处登录，您被踢下线", 441, json!([])),
                    ));
                    actions.push(Action::Close(Close {
                        code: 1000,
                        reason: "kicked".into(),
                        conn: Some(old.to_owned()),
                    }));
                    message = "授权成功,该账号已在别处登录，已被您踢下线。";
                }
            }
        }
        host::kv_set(&slot, format!("{}|{device}", req.conn()).as_bytes(), None);
        actions.push(reply(&frame(message, 200, json!({"token": device}))));
        Ok(HandshakeDecision::Accept(Accept {
            user: Some(uid.clone()),
            data: Some(json!({"uid": uid, "source": source, "device": device}).to_string()),
            rooms: Vec::new(),
            headers: Vec::new(),
            actions,
        }))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let cfg = cfg()?;
        let Some(Value::Object(msg)) = ev
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
        else {
            return Ok(Vec::new()); // ping and non-JSON are ignored
        };
        let kind = text(msg.get("type").unwrap_or(&Value::Null));
        if !cfg.actions.contains(&kind) || conn.user.is_none() {
            return Ok(Vec::new());
        }
        Ok(deliver(conn.user.as_deref(), msg).1)
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        let cfg = cfg()?;
        let http = match &req.source {
            IngressSource::Udp => {
                let body = req.body.strip_suffix(b"\n").unwrap_or(&req.body);
                let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
                if !v.is_object() || !trusted(cfg, &req.remote, &v["sk"]) {
                    return Ok(out(200, &json!({"onLine": 0}), Vec::new()));
                }
                let (reply, actions) = command(&v);
                return Ok(out(200, &reply, actions));
            }
            IngressSource::Http(h) => h,
        };
        let json_body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut params: Map<String, Value> = query_pairs(&http.query)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        params.extend(
            form_pairs(&req.body)
                .into_iter()
                .map(|(k, v)| (k, Value::String(v))),
        );
        if let Value::Object(o) = json_body {
            params.extend(o);
        }
        let p = |k: &str| text(params.get(k).unwrap_or(&Value::Null));
        match http.path.trim_end_matches('/') {
            "/token" if http.method == "POST" => {
                if !sign::equal(&cfg.api_key, &p("sk")) {
                    return Ok(out(
                        403,
                        &json!({"code": 403, "message": "bad sk"}),
                        Vec::new(),
                    ));
                }
                let (uid, source, token) = (p("uid"), p("source"), p("token"));
                if uid.is_empty() || source.is_empty() || token.is_empty() {
                    return Ok(out(
                        400,
                        &json!({"code": 400, "message": "uid, source and token are required"}),
                        Vec::new(),
                    ));
                }
                let mut all = logins(&uid);
                all.insert(
                    source.clone(),
                    json!({"uid": uid, "token": token, "expires": p("expires")}),
                );
                host::kv_set(
                    &format!("login:{uid}"),
                    Value::Object(all).to_string().as_bytes(),
                    None,
                );
                Ok(out(200, &json!({"code": 200, "message": "ok"}), Vec::new()))
            }
            "/chat/send" => {
                if !trusted(cfg, &req.remote, params.get("sk").unwrap_or(&Value::Null)) {
                    return Ok(out(403, &json!({"onLine": 0}), Vec::new()));
                }
                let data = json!({"to_uid": p("to_uid"), "type": "chat", "content": params.get("content").cloned().unwrap_or(Value::Null)});
                let (reply, actions) = command(&json!({"means": "to_uid", "data": data}));
                Ok(out(200, &reply, actions))
            }
            "" if http.method == "GET" => Ok(IngressOutcome {
                status: 200,
                headers: vec![Pair {
                    name: "content-type".into(),
                    value: "text/html; charset=utf-8".into(),
                }],
                body: b"<h1>Hello Swoole. #relay</h1>".to_vec(),
                actions: Vec::new(),
            }),
            _ => Ok(out(
                404,
                &json!({"code": 404, "message": "not found"}),
                Vec::new(),
            )),
        }
    }

    fn on_disconnect(conn: ConnInfo, _info: DisconnectInfo) -> Result<Vec<Action>, String> {
        let session: Value = parse_json(conn.data.as_deref());
        let slot = format!(
            "online:{}:{}",
            text(&session["uid"]),
            text(&session["source"])
        );
        if host::kv_get(&slot)
            .and_then(|b| String::from_utf8(b).ok())
            .is_some_and(|v| v.starts_with(&format!("{}|", conn.id)))
        {
            host::kv_delete(&slot);
        }
        Ok(Vec::new())
    }
}
