//! Seed 003 (node-socket-im) as a relay plugin, on the Socket.IO profile.
//! See `docs/migrating.md`.
//!
//! - **Handshake** (query): `source`, `room_ids` (comma list), `sign` =
//!   `md5(source + room_ids + key)`, optional `userid`, `username`, `watch_quit`.
//!   Failures emit `sys_error` with the original's strings and never connect.
//!   Success joins one room per non-empty item, named `source + item`.
//! - **`postMsg(data, room_id)`**: `newMsg {source, data, room_id, from_sys}` once per room.
//! - **`POST /api/notify`** (form, or a JSON object as published on Redis): `source`, `data`, `sign` = `md5(source + room_id +
//!   data + key)`, `room_id`, optional `filename`; `{"code","msg","data":""}` bodies.
//! - **`GET /refreshpage[?room=]`**: `refreshPage` to a room or everyone.
//! - **`GET /readmsg?source=&filename=`**: today's log file of that source and name.
//! - **Log**: every routed message is appended to `<source>_<filename>` (or
//!   `<source>_msg.log`) in the tenant's dated log directory; names with `/`, `\` or
//!   `..` are refused.
//!
//! Settings: `sources = { <source> = "<sign key>", … }`, `server_ip` (default
//! `127.0.0.1`, shown in `newMsg.ip` and log lines).

use relay_plugin_sdk::serde_json::{json, Value};
use relay_plugin_sdk::*;
use std::collections::BTreeMap;
use std::sync::OnceLock;

struct Settings {
    sources: BTreeMap<String, String>,
    server_ip: String,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

struct SocketIm;

fn cfg() -> Result<&'static Settings, String> {
    SETTINGS.get().ok_or_else(|| "not initialised".to_owned())
}

/// The room that tells whether a source has anyone online.
fn source_room(source: &str) -> String {
    format!("\u{1}source:{source}")
}

fn sys_error(msg: &str) -> Action {
    Action::Reply(event("sys_error", &json!(msg)))
}

fn new_msg(room: String, body: Value) -> Action {
    Action::Emit(Emit {
        target: Target::Rooms(vec![room]),
        message: event("newMsg", &body),
        exclude_sender: false,
    })
}

/// `YYYY-MM-DD H:M:S` (date zero-padded, time not), UTC.
fn stamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h}:{m}:{s}")
}

/// The log line for a routed message.
fn log_line(published: &Value) -> String {
    let ip = SETTINGS.get().map_or("127.0.0.1", |s| s.server_ip.as_str());
    format!(
        "\r\n<br>{}[{ip}] message:{published}",
        stamp(host::now_ms())
    )
}

/// `<source>_<trimmed filename>` or `<source>_msg.log`; `None` for a name that could
/// leave the log directory.
fn log_file(source: &str, filename: &str) -> Option<String> {
    let f = filename.trim();
    if f.contains(['/', '\\']) || f.contains("..") {
        return None;
    }
    Some(if f.is_empty() {
        format!("{source}_msg.log")
    } else {
        format!("{source}_{f}")
    })
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|s| !s.is_empty())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[relay_plugin_sdk::plugin(headers = ["content-type"])]
impl Plugin for SocketIm {
    fn init(settings: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(settings).map_err(|e| format!("settings: {e}"))?;
        let sources: BTreeMap<String, String> = v["sources"]
            .as_object()
            .ok_or("settings.sources = { <source> = \"<sign key>\" } is required")?
            .iter()
            .map(|(k, v)| (k.clone(), text(v)))
            .collect();
        let server_ip = v["server_ip"].as_str().unwrap_or("127.0.0.1").to_owned();
        let _ = SETTINGS.set(Settings { sources, server_ip });
        Ok(())
    }

    fn on_handshake(req: &HandshakeRequest) -> Result<HandshakeDecision, String> {
        let cfg = cfg()?;
        let query = req.query();
        let q = |k: &str| query_param(query, k).unwrap_or_default();
        let (source, room_ids, sign) = (q("source"), q("room_ids"), q("sign"));
        let refuse = |msg: &str| {
            Ok(HandshakeDecision::Reject(Reject {
                status: 403,
                headers: Vec::new(),
                body: msg.to_owned(),
                actions: vec![sys_error(msg)],
            }))
        };
        if source.is_empty() {
            return refuse("source can not be null!");
        }
        if sign.is_empty() {
            return refuse("cilent connect sign can not be null!");
        }
        if room_ids.is_empty() || room_ids == "*" {
            return refuse("room_ids can not be null!");
        }
        let Some(key) = cfg.sources.get(&source) else {
            return refuse("this source can not be configured!");
        };
        let expected = sign::md5_hex(format!("{source}{room_ids}{key}").as_bytes());
        if !sign::verify_ignoring_case(&expected, &sign) {
            return refuse("sign verify failed!");
        }
        let session = json!({
            "userid": q("userid"),
            "username": q("username"),
            "source": source,
            "room_ids": room_ids,
            "watch_quit": q("watch_quit") == "1",
        });
        let mut rooms = vec![source_room(&source)];
        let mut actions = Vec::new();
        if room_ids.chars().count() <= 1 {
            actions.push(sys_error("error room_ids!"));
        } else {
            rooms.extend(items(&room_ids).map(|r| format!("{source}{r}")));
        }
        let userid = q("userid");
        Ok(HandshakeDecision::Accept(Accept {
            user: (!userid.is_empty()).then_some(userid),
            data: Some(session.to_string()),
            rooms,
            headers: Vec::new(),
            actions,
        }))
    }

    fn on_event(conn: ConnInfo, ev: ClientEvent) -> Result<Vec<Action>, String> {
        if ev.name.as_deref() != Some("postMsg") {
            return Ok(Vec::new());
        }
        let session: Value = parse_json(conn.data.as_deref());
        let source = text(&session["source"]);
        let args: Vec<Value> = event_args(ev.data.as_deref());
        let data = args.first().cloned().unwrap_or(Value::Null);
        let room_id = args.get(1).map(text).unwrap_or_default();
        if data.is_null() || data == json!("") {
            return Ok(vec![sys_error("data can not be null!")]);
        }
        if room_id.is_empty() {
            return Ok(vec![sys_error("room_id can not be null!")]);
        }
        // The log records the message as the original published it: every room at once.
        let published =
            json!({"source": source, "data": data, "room_id": room_id, "from_sys": true});
        let mut out: Vec<Action> = items(&room_id)
            .map(|r| {
                new_msg(
                    format!("{source}{r}"),
                    json!({"source": source, "data": data, "room_id": r, "from_sys": true}),
                )
            })
            .collect();
        if let Some(f) = log_file(&source, "") {
            out.push(append_log(&f, &log_line(&published)));
        }
        Ok(out)
    }

    fn on_ingress(req: IngressRequest) -> Result<IngressOutcome, String> {
        let cfg = cfg()?;
        let IngressSource::Http(http) = &req.source else {
            return Ok(plain(404, "not found"));
        };
        match http.path.trim_end_matches('/') {
            "/api/notify" => Ok(notify(cfg, http, &req.body)),
            "/readmsg" => Ok(read_msg(cfg, &http.query)),
            "/refreshpage" => {
                let room = query_param(&http.query, "room");
                let (target, shown) = match &room {
                    Some(r) => (Target::Rooms(vec![r.clone()]), r.clone()),
                    None => (Target::Tenant, "undefined".into()),
                };
                Ok(IngressOutcome {
                    status: 200,
                    headers: Vec::new(),
                    body: format!("refreshPage:{shown}").into_bytes(),
                    actions: vec![Action::Emit(Emit {
                        target,
                        message: event("refreshPage", &Value::Null),
                        exclude_sender: false,
                    })],
                })
            }
            _ => Ok(plain(404, "not found")),
        }
    }

    fn on_disconnect(conn: ConnInfo, _info: DisconnectInfo) -> Result<Vec<Action>, String> {
        let session: Value = parse_json(conn.data.as_deref());
        if session["watch_quit"] != json!(true) {
            return Ok(Vec::new());
        }
        let (source, username) = (text(&session["source"]), text(&session["username"]));
        let room_ids = text(&session["room_ids"]);
        let data =
            json!({"username": username, "key": "user_quit", "msg": format!("{username}退出群聊")});
        Ok(items(&room_ids)
            .map(|r| {
                new_msg(
                    format!("{source}{r}"),
                    json!({"source": source, "data": data, "room_id": r, "from_sys": true}),
                )
            })
            .collect())
    }
}

fn plain(status: u16, body: &str) -> IngressOutcome {
    IngressOutcome {
        status,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
        actions: Vec::new(),
    }
}

/// `{"code":…,"msg":…,"data":""}`, always HTTP 200 and without a content type, as the original.
fn answer(code: u8, msg: &str, actions: Vec<Action>) -> IngressOutcome {
    IngressOutcome {
        status: 200,
        headers: Vec::new(),
        // Keys in the original's order (serde_json sorts them without preserve_order,
        // whose IndexMap would need a random seed the sandbox does not give).
        body: format!(r#"{{"code":{code},"msg":{},"data":""}}"#, json!(msg)).into_bytes(),
        actions,
    }
}

/// `GET /readmsg?source=&filename=`: today's log file of a source, as `/api/notify`
/// names it (the original meant to answer with it and never did: [proposed] 200 with
/// the content, empty when there is none; a name that could leave the log directory
/// is refused as `/api/notify` refuses it).
fn read_msg(cfg: &Settings, query: &str) -> IngressOutcome {
    let source = query_param(query, "source").unwrap_or_default();
    let filename = query_param(query, "filename").unwrap_or_default();
    if source.is_empty() {
        return answer(0, "source can not be null!", Vec::new());
    }
    if !cfg.sources.contains_key(&source) {
        return answer(0, "this source can not be configured!", Vec::new());
    }
    let Some(file) = log_file(&source, &filename) else {
        return answer(0, "filename can not contain '/', '\\' or '..'!", Vec::new());
    };
    IngressOutcome {
        status: 200,
        headers: vec![Pair {
            name: "content-type".into(),
            value: "text/html; charset=utf-8".into(),
        }],
        body: host::log_read(&file).unwrap_or_default(),
        actions: Vec::new(),
    }
}

fn notify(cfg: &Settings, http: &HttpRequest, body: &[u8]) -> IngressOutcome {
    let ct = header(&http.headers, "content-type").unwrap_or_default();
    // Form, as the original's /api/notify; a JSON object (strings, or any value as its
    // JSON text) for backends that `PUBLISH xin_common_chat` (relay's redis_ingress).
    let p: BTreeMap<String, String> = if ct.starts_with("application/x-www-form-urlencoded") {
        form_pairs(body).into_iter().collect()
    } else if ct.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect(),
            _ => BTreeMap::new(),
        }
    } else {
        BTreeMap::new()
    };
    let f = |k: &str| p.get(k).cloned().unwrap_or_default();
    let (source, data, sign, room_id, filename) = (
        f("source"),
        f("data"),
        f("sign"),
        f("room_id"),
        f("filename"),
    );
    for (v, msg) in [
        (&source, "source can not be null!"),
        (&data, "data can not be null!"),
        (&sign, "sign can not be null!"),
        (&room_id, "room_id can not be null!"),
    ] {
        if v.is_empty() {
            return answer(0, msg, Vec::new());
        }
    }
    let Some(key) = cfg.sources.get(&source) else {
        return answer(0, "this source can not be configured!", Vec::new());
    };
    let expected = sign::md5_hex(format!("{source}{room_id}{data}{key}").as_bytes());
    if !sign::verify_ignoring_case(&expected, &sign) {
        return answer(0, "api notify sign verify failed!", Vec::new());
    }
    let Some(file) = log_file(&source, &filename) else {
        return answer(0, "filename can not contain '/', '\\' or '..'!", Vec::new());
    };
    let mut actions = Vec::new();
    // Delivered only if the source has someone online; logged either way.
    if host::room_count(&source_room(&source)) > 0 {
        actions.extend(items(&room_id).map(|r| {
            new_msg(
                format!("{source}{r}"),
                json!({"source": source, "data": data, "room_id": r, "filename": filename,
                       "from_sys": true, "ip": cfg.server_ip}),
            )
        }));
    }
    // The log records the message as the original published it (all its rooms, no sign).
    let published = json!({"source": source, "data": data, "room_id": room_id, "filename": filename,
                           "from_sys": true, "ip": cfg.server_ip});
    actions.push(append_log(&file, &log_line(&published)));
    answer(1, "message notify successed!", actions)
}
