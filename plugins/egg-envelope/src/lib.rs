//! Seed 002 (egg-socket.io with signed envelopes) as a relay plugin, on the Socket.IO
//! profile. See `docs/migrating.md`.
//!
//! - **Connect**: anyone; relay gives the socket a `userId` and sends `responseMessage`
//!   `saveId {socketId, userId}`.
//! - **Every packet**: the first argument's `meta.sign` must equal
//!   `md5(app + key + String(timestamp))`; otherwise `Illegal signature, disconnected
//!   client <id>` and the socket is disconnected (the packet is dropped).
//! - **`requestMessage`**: `sendToOthers` to `meta.target` only when that socket's
//!   userId is `meta.userId`; `reconnectAndUpdates` rebinds the socket to `meta.userId`.
//! - **`POST /api/transportMessage`**: JSON envelope, sign verified unless
//!   `verify_http_sign = false` (the original never verified it).
//!
//! Settings: `apps = { <app> = "<key>", … }`, `verify_http_sign` (default true).

use relay_plugin_sdk::serde_json::{json, Value};
use relay_plugin_sdk::*;
use std::collections::HashMap;
use std::sync::OnceLock;

struct Settings {
    apps: HashMap<String, String>,
    verify_http_sign: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

struct EggEnvelope;

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

/// `{"meta":{"timestamp":now},"data":{"action","payload"}}` as `responseMessage`.
fn response(action: &str, payload: Value) -> Message {
    event(
        "responseMessage",
        &json!({"meta": {"timestamp": host::now_ms()}, "data": {"action": action, "payload": payload}}),
    )
}

/// A time-based UUID (version 1), as the original generated for `userId`: the time in
/// 100 ns intervals since 1582-10-15, a random clock sequence and a random node id
/// (multicast bit set, as RFC 4122 §4.5 asks of a node id that is not a MAC address).
fn uuid() -> String {
    /// 100 ns intervals from 1582-10-15 to 1970-01-01.
    const GREGORIAN_TO_UNIX: u64 = 0x01B2_1DD2_1381_4000;
    let mut r = host::random_bytes(10);
    r.resize(10, 0);
    // Sub-millisecond part random: ids minted in the same millisecond still differ.
    let sub = u64::from(u16::from_be_bytes([r[8], r[9]])) % 10_000;
    let t = host::now_ms() * 10_000 + sub + GREGORIAN_TO_UNIX;
    let time_low = (t & 0xffff_ffff) as u32;
    let time_mid = ((t >> 32) & 0xffff) as u16;
    let time_hi = (((t >> 48) & 0x0fff) as u16) | 0x1000;
    let clock_seq = (u16::from_be_bytes([r[0], r[1]]) & 0x3fff) | 0x8000;
    let mut node = [0u8; 6];
    node.copy_from_slice(&r[2..8]);
    node[0] |= 0x01;
    format!(
        "{time_low:08x}-{time_mid:04x}-{time_hi:04x}-{clock_seq:04x}-{}",
        sign::hex(&node)
    )
}

/// Whether `meta` carries a valid signature for a configured app.
fn signed(cfg: &Settings, meta: &Value) -> bool {
    let (app, sign, ts) = (text(&meta["app"]), text(&meta["sign"]), &meta["timestamp"]);
    if app.is_empty() || sign.is_empty() || ts.is_null() {
        return false;
    }
    let Some(key) = cfg.apps.get(&app) else {
        return false; // unknown app: illegal (the original threw)
    };
    sign::verify_ignoring_case(
        &sign::md5_hex(format!("{app}{key}{}", text(ts)).as_bytes()),
        &sign,
    )
}

/// `target` is a live socket whose userId is `user`.
fn addressable(target: &str, user: &str) -> bool {
    !target.is_empty()
        && !user.is_empty()
        && host::user_connections(user).iter().any(|c| c == target)
}

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for EggEnvelope {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let apps = v["apps"]
            .as_object()
            .ok_or("settings.apps = { <app> = \"<key>\" } is required")?
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let verify_http_sign = v["verify_http_sign"].as_bool().unwrap_or(true);
        let _ = SETTINGS.set(Settings {
            apps,
            verify_http_sign,
        });
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let user = uuid();
        let save = response("saveId", json!({"socketId": req.conn(), "userId": user}));
        let mut d = accept(Some(user), Vec::new());
        if let HandshakeDecision::Accept(a) = &mut d {
            a.actions.push(Action::Reply(save));
        }
        Ok(d)
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let cfg = cfg()?;
        let args: Vec<Value> = event_args(ev.data.as_deref());
        let first = args.first().cloned().unwrap_or(Value::Null);
        let meta = &first["meta"];
        if !signed(cfg, meta) {
            let why = format!("Illegal signature, disconnected client {}", conn.id);
            return Ok(vec![
                Action::Reply(response("exchange", json!(why))),
                close(1000, "illegal signature"),
            ]);
        }
        if ev.name.as_deref() != Some("requestMessage") {
            return Ok(Vec::new());
        }
        let user = text(&meta["userId"]);
        Ok(match first["data"]["action"].as_str() {
            Some("sendToOthers") => {
                let target = text(&meta["target"]);
                if !addressable(&target, &user) {
                    return Ok(Vec::new());
                }
                vec![Action::Emit(Emit {
                    target: Target::Connection(target),
                    message: response("exchange", first["data"]["payload"].clone()),
                    exclude_sender: false,
                })]
            }
            Some("reconnectAndUpdates") if !user.is_empty() => vec![
                identify(&user),
                Action::Reply(response(
                    "reconnectUpdated",
                    json!("socket userid updated!"),
                )),
            ],
            _ => Vec::new(),
        })
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        let cfg = cfg()?;
        let path = match &req.source {
            IngressSource::Http(h) if h.method == "POST" => h.path.trim_end_matches('/').to_owned(),
            _ => return Ok(respond(404, &json!({"message": "Not Found"}), Vec::new())),
        };
        if path != "/api/transportMessage" {
            return Ok(respond(404, &json!({"message": "Not Found"}), Vec::new()));
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        // egg-validate's rules: every field present with its type.
        let mut errors = Vec::new();
        for (field, ok) in [
            ("timestamp", body["timestamp"].is_number()),
            ("app", body["app"].is_string()),
            ("target", body["target"].is_string()),
            ("userId", body["userId"].is_string()),
            ("sign", body["sign"].is_string()),
            ("message", body["message"].is_object()),
        ] {
            if !ok {
                errors.push(json!({"code": "invalid", "field": field, "message": "should be present with the right type"}));
            }
        }
        if !errors.is_empty() {
            return Ok(respond(
                422,
                &json!({"code": "invalid_param", "message": "Validation Failed", "errors": errors}),
                Vec::new(),
            ));
        }
        if cfg.verify_http_sign && !signed(cfg, &body) {
            return Ok(respond(
                401,
                &json!({"status": 401, "success": false, "message": "Illegal signature"}),
                Vec::new(),
            ));
        }
        let (target, user) = (text(&body["target"]), text(&body["userId"]));
        if !addressable(&target, &user) {
            return Ok(respond(
                500,
                &json!({"status": 500, "success": false, "message": format!("转发失败 ID: {target} 不存在")}),
                Vec::new(),
            ));
        }
        let payload = Value::String(body["message"].to_string());
        Ok(respond(
            200,
            &json!({"status": 200, "success": true, "message": "转发成功"}),
            vec![Action::Emit(Emit {
                target: Target::Connection(target),
                message: response("exchange", payload),
                exclude_sender: false,
            })],
        ))
    }
}
