//! Example auth plugin. A client connects with
//! `?user=U&ts=UNIX_SECONDS&sign=md5(U + "\n" + ts + "\n" + key)` (hex); the
//! handshake is accepted if the sign matches, `ts` is within `window_secs`
//! (default 300) of now, and the sign was not used before (kept in the
//! tenant's key-value store until it could no longer be valid). Clients may
//! join rooms with `{"event":"join","room":"r"}` and emit with
//! `{"event":"emit","room":"r","data":...}`.
//!
//! The signed text is canonical ([`sign::canonical`], [`sign::unix_secs`]): fields
//! on their own lines, `ts` in plain decimal, `user` without control characters.
//! Signing `user + ts + key` instead would let a sign issued to `bob0` log in as
//! `bob` (with `ts = 0…`), `carol+` as `carol` (`ts = +…`), `120` as `12`.
//!
//! Settings: `key` (required), `window_secs`.

use relay_plugin_sdk::serde_json::{json, Value};
use relay_plugin_sdk::*;
use std::sync::OnceLock;

struct Settings {
    key: String,
    window: u64,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

struct Md5Sign;

fn refuse(why: &str) -> HandshakeDecision {
    reject(401, why)
}

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for Md5Sign {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let key = v["key"]
            .as_str()
            .filter(|k| !k.is_empty())
            .ok_or("settings.key (string) is required")?;
        let window = v["window_secs"].as_u64().unwrap_or(300);
        let _ = SETTINGS.set(Settings {
            key: key.to_owned(),
            window,
        });
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let cfg = SETTINGS.get().ok_or("not initialised")?;
        let query = req.query();
        let [Some(user), Some(ts), Some(sign)] = query_params(query, ["user", "ts", "sign"]) else {
            return Ok(refuse("user, ts and sign are required"));
        };
        if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
            return Ok(refuse(
                "user must be 1-128 characters, none of them control characters",
            ));
        }
        let Some(t) = sign::unix_secs(&ts) else {
            return Ok(refuse("ts must be unix seconds in plain decimal"));
        };
        // The sign is remembered while its `ts` is inside the window: it could be replayed
        // until then, and not after.
        let Some(ttl) = replay::window_left(t as i64, cfg.window) else {
            return Ok(refuse("ts outside the allowed window"));
        };
        let Some(text) = sign::canonical(&[&user, &ts, &cfg.key]) else {
            return Ok(refuse("bad sign"));
        };
        let digest = sign::md5_of(&[text.as_bytes()]);
        if !sign::verify_hex(&digest, &sign) {
            return Ok(refuse("bad sign"));
        }
        // Keyed by the digest's hex: the sign in either case is the same sign.
        if !replay::first_use("handshake", &sign::hex(&digest), ttl) {
            return Ok(refuse("sign already used"));
        }
        Ok(accept(Some(user.into_owned()), vec![]))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let data: Value = parse_json(ev.data.as_deref());
        let room = data["room"].as_str().unwrap_or_default().to_owned();
        Ok(match ev.name.as_deref() {
            Some("join") if !room.is_empty() => vec![
                join(vec![room.clone()]),
                reply(&json!({"event": "joined", "room": room})),
            ],
            Some("emit") if !room.is_empty() => vec![emit(
                Target::Rooms(vec![room]),
                &json!({"event": "message", "from": conn.user, "data": data["data"]}),
            )],
            _ => vec![reply(
                &json!({"event": "error", "error": "use join or emit with a room"}),
            )],
        })
    }
}
