//! Seed 000 (xiaoniu socket.io server, workerman/phpsocket.io) as a relay plugin, on the
//! Socket.IO profile. See `docs/migrating.md`.
//!
//! - **Signs**: every field but `sign` whose value is not PHP-falsy, keys sorted,
//!   `k=v` joined with `&&`, then `&&api_key=<key>`, md5. `time_stamp` must be a JSON
//!   integer within ±1800 s; an accepted sign cannot be used again.
//! - **Events** `login`, `join`, `push` answer with `server_return {type, errcode,
//!   errmsg[, data]}` and the original's error strings. Rooms: `<client_id>` (logged in)
//!   and `<client_id>-<room>`.
//! - **HTTP push** (any path, GET or POST form): `client_id`, `content`, `event`,
//!   `room`, `is_save_offline`; `{"errcode","errmsg"}`; kept offline per room, delivered
//!   to the room on the next join with `is_online: false`.
//! - **AES**: with `aes_key`, every outgoing `datas` is base64(AES-256-CBC) with the
//!   key's bytes and its first 16 as IV.
//! - **Callbacks**: `login_cb` / `disconnect_cb` (GET, `sid=` appended) per client.
//!
//! Settings: `clients = { <client_id> = { api_key, aes_key?, login_cb?, disconnect_cb? } }`.

use aes::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use relay_plugin_sdk::serde_json::{json, Map, Value};
use relay_plugin_sdk::*;
use std::collections::HashMap;
use std::sync::OnceLock;

/// How far `time_stamp` may be from now, and how long a used sign is remembered.
const WINDOW_SECS: u64 = 1800;

struct Client {
    api_key: String,
    aes_key: Option<[u8; 32]>,
    login_cb: String,
    disconnect_cb: String,
}

static CLIENTS: OnceLock<HashMap<String, Client>> = OnceLock::new();

struct Xiaoniu;

fn clients() -> Result<&'static HashMap<String, Client>, String> {
    CLIENTS.get().ok_or_else(|| "not initialised".to_owned())
}

/// PHP's `empty()`: "", "0", 0, null, false, [] (and {}).
fn falsy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty() || s == "0",
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "1".into(),
        other => other.to_string(),
    }
}

/// The string that is signed: sorted non-empty fields but `sign`, then the api key.
pub fn sign_string(o: &Map<String, Value>, api_key: &str) -> String {
    let mut keys: Vec<&String> = o
        .keys()
        .filter(|k| *k != "sign" && !falsy(&o[*k]))
        .collect();
    keys.sort();
    let mut parts: Vec<String> = keys
        .iter()
        .map(|k| format!("{k}={}", render(&o[*k])))
        .collect();
    parts.push(format!("api_key={api_key}"));
    parts.join("&&")
}

fn aes_datas(c: &Client, plain: &str) -> String {
    match &c.aes_key {
        None => plain.to_owned(),
        Some(k) => {
            let mut iv = [0u8; 16];
            iv.copy_from_slice(&k[..16]);
            let enc = cbc::Encryptor::<aes::Aes256>::new(k.into(), &iv.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plain.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(enc)
        }
    }
}

fn server_return(kind: &str, errcode: u8, errmsg: &str) -> Action {
    Action::Reply(event(
        "server_return",
        &json!({"type": kind, "errcode": errcode, "errmsg": errmsg}),
    ))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => render(other),
    }
}

fn webhook_get(url: &str, sid: &str) -> Option<Action> {
    if !url.starts_with("http") {
        return None;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(Action::Webhook(Webhook {
        method: "GET".into(),
        url: format!("{url}{sep}sid={sid}"),
        headers: Vec::new(),
        body: String::new(),
    }))
}

/// Check an event object's common fields and signature; `Err` is the errmsg.
fn validate(kind: &str, o: &Map<String, Value>) -> Result<&'static Client, String> {
    let bang = if kind == "push" { "！" } else { "" };
    let given = |k: &str| o.get(k).is_some_and(|v| !falsy(v));
    if !given("client_id") {
        return Err(format!("client_id没传哦{bang}"));
    }
    if kind == "join" && !given("room") {
        return Err("room没传哦".into());
    }
    if kind == "push" && !given("datas") {
        return Err("datas没传哦！".into());
    }
    for (k, msg) in [
        ("time_stamp", "time_stamp没传哦"),
        ("nonce_str", "nonce_str没传哦"),
        ("sign", "sign没传哦"),
    ] {
        if !given(k) {
            return Err(msg.into());
        }
    }
    let client = clients()?
        .get(&text(&o["client_id"]))
        .ok_or_else(|| "client_id不存在哦".to_owned())?;
    let Some(ts) = o["time_stamp"]
        .as_i64()
        .filter(|_| o["time_stamp"].is_i64() || o["time_stamp"].is_u64())
    else {
        return Err("time_stamp不是整数".into());
    };
    if !replay::within_window(ts, WINDOW_SECS) {
        return Err("time_stamp已过期".into());
    }
    let expected = sign::md5_hex(sign_string(o, &client.api_key).as_bytes());
    let sign = text(&o["sign"]);
    if !sign::verify_ignoring_case(&expected, &sign) {
        return Err(if kind == "login" {
            "不能重复提交"
        } else {
            "验证失败"
        }
        .into());
    }
    if !replay::first_use(
        "xiaoniu",
        &sign.to_ascii_lowercase(),
        (WINDOW_SECS * 2) as u32,
    ) {
        return Err("该sign已被使用,请重新生成".into());
    }
    Ok(client)
}

#[relay_plugin_sdk::plugin(headers = [])]
impl Plugin for Xiaoniu {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let mut out = HashMap::new();
        for (id, c) in v["clients"]
            .as_object()
            .ok_or("settings.clients = { <client_id> = { api_key = \"…\" } } is required")?
        {
            let aes = text(&c["aes_key"]);
            let aes_key = match aes.len() {
                0 => None,
                32 => {
                    let mut k = [0u8; 32];
                    k.copy_from_slice(aes.as_bytes());
                    Some(k)
                }
                n => {
                    return Err(format!(
                        "clients.{id}.aes_key must be 32 bytes (AES-256), not {n}"
                    ))
                }
            };
            out.insert(
                id.clone(),
                Client {
                    api_key: text(&c["api_key"]),
                    aes_key,
                    login_cb: text(&c["login_cb"]),
                    disconnect_cb: text(&c["disconnect_cb"]),
                },
            );
        }
        let _ = CLIENTS.set(out);
        Ok(())
    }

    fn on_handshake(_req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        // Anyone may connect; `login` must follow within the tenant's auth_timeout_ms.
        Ok(HandshakeDecision::Defer(Vec::new()))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        let kind = match ev.name.as_deref() {
            Some(k @ ("login" | "join" | "push")) => k,
            _ => return Ok(Vec::new()),
        };
        let args: Vec<Value> = event_args(ev.data.as_deref());
        // The argument is an object, or a JSON string holding one.
        let obj = match args.first() {
            Some(Value::Object(o)) => Some(o.clone()),
            Some(Value::String(s)) => serde_json::from_str::<Map<String, Value>>(s).ok(),
            _ => None,
        };
        let Some(o) = obj else {
            let msg = if kind == "push" {
                "数据格式有误！"
            } else {
                "数据格式有误"
            };
            return Ok(vec![server_return(kind, 1, msg)]);
        };
        if kind == "login" && conn.user.is_some() {
            return Ok(vec![server_return("login", 1, "已登录过了")]);
        }
        let client = match validate(kind, &o) {
            Ok(c) => c,
            Err(msg) => return Ok(vec![server_return(kind, 1, &msg)]),
        };
        let cid = text(&o["client_id"]);
        Ok(match kind {
            "login" => {
                let mut v = vec![
                    Action::SetIdentity(Identity {
                        user: Some(cid.clone()),
                        data: Some(json!({"client_id": cid}).to_string()),
                        conn: None,
                    }),
                    join(vec![cid.clone()]),
                    Action::Reply(event(
                        "server_return",
                        &json!({"type": "login", "errcode": 0, "errmsg": "恭喜登录成功！", "data": {"sid": conn.id}}),
                    )),
                ];
                v.extend(webhook_get(&client.login_cb, &conn.id));
                v
            }
            "join" => vec![
                // Joining delivers the room's kept messages first, then the answer.
                join(vec![format!("{cid}-{}", text(&o["room"]))]),
                server_return("join", 0, "恭喜加入房间成功！"),
            ],
            _ => {
                let room = text(&o["room"]);
                let target = if room.is_empty() {
                    cid.clone()
                } else {
                    format!("{cid}-{room}")
                };
                if host::room_count(&target) == 0 {
                    return Ok(vec![server_return("push", 1, "offline")]);
                }
                let name = Some(text(&o["event"]))
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "message".into());
                let body = json!({"sid": conn.id, "datas": aes_datas(client, &text(&o["datas"])), "room": room});
                vec![Action::Emit(Emit {
                    target: Target::Rooms(vec![target]),
                    message: event(&name, &body),
                    exclude_sender: false,
                })]
            }
        })
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        let IngressSource::Http(http) = &req.source else {
            return Ok(answer(1, "数据格式有误"));
        };
        // POST body wins when it is not empty, else the query.
        let params: HashMap<String, String> = if http.method == "POST" && !req.body.is_empty() {
            form_pairs(&req.body).into_iter().collect()
        } else {
            query_pairs(&http.query).into_iter().collect()
        };
        let p = |k: &str| params.get(k).cloned().unwrap_or_default();
        let keep = match p("is_save_offline").as_str() {
            "" | "0" => false,
            "1" => true,
            _ => return Ok(answer(1, "是否要存储离线消息有误，只能传1,0")),
        };
        let (cid, content, room) = (p("client_id"), p("content"), p("room"));
        if cid.is_empty() {
            return Ok(answer(1, "client_id不能为空"));
        }
        if content.is_empty() {
            return Ok(answer(1, "内容不能为空"));
        }
        let Some(client) = clients()?.get(&cid) else {
            return Ok(answer(1, "client_id不存在"));
        };
        let name = Some(p("event"))
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "message".into());
        let datas = aes_datas(client, &content);
        let target = if room.is_empty() {
            cid.clone()
        } else {
            format!("{cid}-{room}")
        };
        if host::room_count(&target) > 0 {
            let mut out = answer(0, "ok");
            out.actions.push(Action::Emit(Emit {
                target: Target::Rooms(vec![target]),
                message: event(&name, &json!({"datas": datas, "is_online": true})),
                exclude_sender: false,
            }));
            return Ok(out);
        }
        let mut out = answer(1, "offline");
        if keep && !room.is_empty() {
            // Kept durably (the answer waits for it) and given to the room on the next join.
            out.actions.push(Action::StoreOffline(Offline {
                user: None,
                room: Some(target),
                message: event(&name, &json!({"datas": datas, "is_online": false})),
            }));
        }
        Ok(out)
    }

    fn on_disconnect(conn: ConnInfo, _info: DisconnectInfo) -> Result<Vec<Action>, String> {
        // Only logged-in sockets call back.
        let Some(cid) = conn.user.as_deref() else {
            return Ok(Vec::new());
        };
        let url = clients()?
            .get(cid)
            .map(|c| c.disconnect_cb.clone())
            .unwrap_or_default();
        Ok(webhook_get(&url, &conn.id).into_iter().collect())
    }
}

fn answer(errcode: u8, errmsg: &str) -> IngressOutcome {
    IngressOutcome {
        status: 200,
        headers: vec![Pair {
            name: "content-type".into(),
            value: "application/json".into(),
        }],
        body: json!({"errcode": errcode, "errmsg": errmsg})
            .to_string()
            .into_bytes(),
        actions: Vec::new(),
    }
}
