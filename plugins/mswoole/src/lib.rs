//! Seed 004 (MSwoole) as a relay plugin: raw JSON WebSocket with 3DES auth and
//! `a.c.m` method routing. See `docs/migrating.md`.
//!
//! - **Handshake**: query `auth` = base64 (alphabet `*`→`+`, `:`→`/`, `_`→`=`) of
//!   3DES-EDE3-ECB(JSON `{id, type, code, nickname, ctime}`) with the passphrase padded
//!   with `'0'` to 24 bytes, PKCS#5 padding. Missing or bad → HTTP 403 with header
//!   `message: error auth` and an empty body. A plaintext that is not a JSON object is
//!   refused (the original accepted it: a bug).
//! - **Messages**: `2` → `3`; non-JSON → closed silently; JSON `{"method": "a.c.m", …}` →
//!   `receiveMessage`, then the routed answer `{"status","event","info","param"?}`.
//! - **Routes**: `index.index.index` → `success`; the sample Live app:
//!   `live.user.join|say|out` (wechat users) and `live.wall.join|say` (big screens) in
//!   rooms `LIVE_USER_ROOM_<code>`; unknown controller → 500 `controllerError`, unknown
//!   method → 405 `methodNotFound`.
//! - **HTTP** on the same port (with `http_ingress`): `<h1>Hi guy!</h1>`.
//!
//! Settings: `passphrase` (default `kfw001-websocket`).

use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockDecrypt, KeyInit};
use relay_plugin_sdk::serde_json::{json, Map, Value};
use relay_plugin_sdk::*;
use std::sync::OnceLock;

static KEY: OnceLock<[u8; 24]> = OnceLock::new();

struct Mswoole;

/// The passphrase right-padded with ASCII '0' to 24 bytes (longer ones are cut).
fn des_key(passphrase: &str) -> [u8; 24] {
    let mut k = [b'0'; 24];
    for (d, s) in k.iter_mut().zip(passphrase.bytes()) {
        *d = s;
    }
    k
}

/// Decode an `auth` parameter into the session object, or say why not.
pub fn decode_auth(auth: &str, key: &[u8; 24]) -> Result<Map<String, Value>, &'static str> {
    let mut data = encoding::base64_decode(auth, ['*', ':', '_']).ok_or("bad base64")?;
    if data.is_empty() || data.len() % 8 != 0 {
        return Err("not whole 8-byte blocks");
    }
    let cipher = des::TdesEde3::new_from_slice(key).map_err(|_| "bad key")?;
    for block in data.chunks_exact_mut(8) {
        cipher.decrypt_block(GenericArray::from_mut_slice(block));
    }
    let pad = usize::from(*data.last().ok_or("empty")?);
    if pad == 0
        || pad > 8
        || data[data.len() - pad..]
            .iter()
            .any(|&b| usize::from(b) != pad)
    {
        return Err("bad padding");
    }
    data.truncate(data.len() - pad);
    match serde_json::from_slice::<Value>(&data) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err("plaintext is not a JSON object"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

/// `& < > "` escaped, as the original's htmlspecialchars.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn escape_all(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(escape(&s)),
        Value::Array(a) => Value::Array(a.into_iter().map(escape_all).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, escape_all(v))).collect()),
        other => other,
    }
}

/// The reply shape; `param` is left out when empty (null, "", 0, "0", [], false).
fn answer(status: u16, event: &str, info: &str, param: Value) -> Value {
    let empty = match &param {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty() || s == "0",
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) | Value::Bool(true) => false,
    };
    let mut o = json!({"status": status, "event": event, "info": info});
    if !empty {
        o["param"] = param;
    }
    o
}

/// `method` → (module, controller, method) as the original normalises it.
pub fn route(method: &str) -> (String, String, String) {
    let cap = |s: &str| {
        let l = s.to_lowercase();
        let mut c = l.chars();
        match c.next() {
            Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
            None => l,
        }
    };
    let m = if method.is_empty() { "index" } else { method };
    let parts: Vec<&str> = m.trim_matches('.').split('.').collect();
    match parts.as_slice() {
        [m] => ("Index".into(), "Index".into(), m.to_lowercase()),
        [c, m] => ("Index".into(), cap(c), m.to_lowercase()),
        [a, c, m] => (cap(a), cap(c), m.to_lowercase()),
        _ => ("Index".into(), "Index".into(), "index".into()),
    }
}

fn room_of(session: &Value) -> String {
    format!("LIVE_USER_ROOM_{}", text(&session["code"]))
}

fn to_room(session: &Value, v: &Value, exclude_sender: bool) -> Action {
    Action::Emit(Emit {
        target: Target::Rooms(vec![room_of(session)]),
        message: message(v),
        exclude_sender,
    })
}

/// The Live sample app. `None` when the controller has no such method.
fn live(controller: &str, method: &str, session: &Value, data: &Value) -> Option<Vec<Action>> {
    let kind = text(&session["type"]);
    let who = json!({"id": text(&session["id"]), "nickname": text(&session["nickname"])});
    let need = |want: &str, event: &str| -> Option<Vec<Action>> {
        if kind != want {
            return Some(vec![reply(&answer(
                403,
                event,
                "用户类型不正确",
                Value::Null,
            ))]);
        }
        if text(&session["code"]).is_empty() {
            return Some(vec![reply(&answer(
                999,
                "codeIsEmpty",
                "房间编码为空",
                Value::Null,
            ))]);
        }
        None
    };
    let room = room_of(session);
    Some(match (controller, method) {
        ("User", "join") => need("wechatUser", "mustBeWechatUser").unwrap_or_else(|| {
            vec![
                join(vec![room.clone()]),
                reply(&answer(200, "userJoinSuccess", "加入成功", Value::Null)),
                to_room(
                    session,
                    &answer(200, "userJoinBroadcast", "用户加入", who.clone()),
                    true,
                ),
            ]
        }),
        ("User", "say") => need("wechatUser", "mustBeWechatUser").unwrap_or_else(|| {
            let mut p = who.clone();
            p["content"] = data["content"].clone();
            vec![to_room(
                session,
                &answer(200, "userSayBroadcast", "用户发言", p),
                false,
            )]
        }),
        ("User", "out") => need("wechatUser", "mustBeWechatUser").unwrap_or_else(|| {
            vec![
                to_room(
                    session,
                    &answer(200, "userOutBroadcast", "用户离开", who.clone()),
                    true,
                ),
                Action::Leave(Membership {
                    rooms: vec![room.clone()],
                    conn: None,
                }),
                reply(&answer(200, "userOutSuccess", "离开成功", Value::Null)),
            ]
        }),
        ("Wall", "join") => need("wall", "mustBeWall").unwrap_or_else(|| {
            vec![
                join(vec![room.clone()]),
                reply(&answer(
                    200,
                    "wallJoinSuccess",
                    "大屏幕加入成功",
                    Value::Null,
                )),
            ]
        }),
        ("Wall", "say") => need("wall", "mustBeWall").unwrap_or_else(|| {
            let p = json!({"content": data["content"].clone()});
            vec![to_room(
                session,
                &answer(200, "wallSayBroadcast", "大屏幕发言", p),
                false,
            )]
        }),
        _ => return None,
    })
}

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for Mswoole {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let pass = v["passphrase"].as_str().unwrap_or("kfw001-websocket");
        if pass.is_empty() || pass.len() > 24 {
            return Err("settings.passphrase must be 1 to 24 bytes".into());
        }
        let _ = KEY.set(des_key(pass));
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let key = KEY.get().ok_or("not initialised")?;
        let forbidden = || {
            HandshakeDecision::Reject(Reject {
                status: 403,
                headers: vec![Pair {
                    name: "message".into(),
                    value: "error auth".into(),
                }],
                body: String::new(),
                actions: Vec::new(),
            })
        };
        let Some(auth) = query_param(req.query(), "auth").filter(|a| !a.is_empty()) else {
            return Ok(forbidden());
        };
        let Ok(mut session) = decode_auth(&auth, key) else {
            return Ok(forbidden());
        };
        session.remove("ctime");
        let session = Value::Object(session);
        let user = (text(&session["type"]) == "wechatUser")
            .then(|| text(&session["id"]))
            .filter(|u| !u.is_empty());
        Ok(HandshakeDecision::Accept(Accept {
            user,
            data: Some(session.to_string()),
            rooms: Vec::new(),
            headers: vec![
                Pair {
                    name: "sec-websocket-version".into(),
                    value: "13".into(),
                },
                Pair {
                    name: "keepalive".into(),
                    value: "off".into(),
                },
            ],
            actions: Vec::new(),
        }))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        if ev.text == "2" {
            return Ok(vec![Action::Reply(Message {
                event: None,
                data: "\"3\"".into(),
                ack: None,
                spread: false,
            })]);
        }
        let Some(Value::Object(mut data)) = ev
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
        else {
            return Ok(vec![close(1000, "")]); // non-JSON: closed silently
        };
        let session: Value = parse_json(conn.data.as_deref());
        data.insert("fd".into(), Value::String(conn.id.clone()));
        data.insert("code".into(), session["code"].clone());
        data.insert("auth".into(), session.clone());
        let data = escape_all(Value::Object(data));
        let mut out = vec![reply(&answer(
            200,
            "receiveMessage",
            "服务端已收到您的请求内容",
            Value::Null,
        ))];
        let (module, controller, method) = route(data["method"].as_str().unwrap_or(""));
        let routed = match (module.as_str(), controller.as_str()) {
            ("Index", "Index") => match method.as_str() {
                "index" => Some(vec![reply(&answer(
                    200,
                    "success",
                    "执行完成",
                    Value::Null,
                ))]),
                _ => None,
            },
            ("Live", c @ ("User" | "Wall")) => live(c, &method, &session, &data),
            _ => {
                out.push(reply(&answer(
                    500,
                    "controllerError",
                    "程序错误",
                    Value::Null,
                )));
                return Ok(out);
            }
        };
        out.extend(routed.unwrap_or_else(|| {
            vec![reply(&answer(
                405,
                "methodNotFound",
                "您请求的method方法不存在",
                Value::Null,
            ))]
        }));
        Ok(out)
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        // Plain HTTP on the WebSocket port answered this page in the original.
        let _ = req;
        Ok(IngressOutcome {
            status: 200,
            headers: vec![Pair {
                name: "content-type".into(),
                value: "text/html; charset=utf-8".into(),
            }],
            body: b"<h1>Hi guy!</h1>".to_vec(),
            actions: Vec::new(),
        })
    }
}
