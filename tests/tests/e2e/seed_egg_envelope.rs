//! Seed 002 (egg-socket.io envelopes) on `examples/seeds/egg-envelope.toml`, with
//! socket.io-client 2.x (default transports) and HTTP as the backend.

use anyhow::Result;
use relay_tests::sio::SioDriver;
use relay_tests::{http, TestRelay};
use serde_json::{json, Value};

pub(crate) const APP: &str = "signatureApp";
/// The README's sample: md5("signatureApp" + key + "1543469988762").
pub(crate) const TS: u64 = 1543469988762;
pub(crate) const SIGN: &str = "236e7f552a5cde6002c14c2510df1ec1";

pub(crate) fn envelope(action: &str, user: &Value, target: &Value, payload: Value) -> Value {
    json!([{
        "meta": {"timestamp": TS, "app": APP, "sign": SIGN, "userId": user, "target": target, "client": target},
        "data": {"action": action, "payload": payload}
    }])
}

async fn start() -> Result<TestRelay> {
    TestRelay::start(&seed_config()?).await
}

/// The seed's example config on an ephemeral port.
pub(crate) fn seed_config() -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/seeds/egg-envelope.toml");
    Ok(std::fs::read_to_string(&path)?
        .replace("bind = \"0.0.0.0:7001\"", "bind = \"127.0.0.1:0\"")
        .replace(
            "[server]\ndata_dir = \"../../relay-data/egg-envelope\"\n",
            "",
        ))
}

/// Connect `name` and return its `saveId` payload.
pub(crate) async fn connect(d: &mut SioDriver, name: &str, url: &str) -> Result<Value> {
    let c = d.connect(name, 2, url, json!({})).await?;
    let save = d.next(name, "event", Some("responseMessage")).await?;
    let p = save["args"][0]["data"].clone();
    assert_eq!(p["action"], "saveId", "{save}");
    assert_eq!(
        p["payload"]["socketId"], c["id"],
        "the socket id clients see"
    );
    assert!(save["args"][0]["meta"]["timestamp"].is_u64());
    // userId is a time-based UUID (version 1, RFC 4122 variant), as the original's.
    let uid = p["payload"]["userId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let b = uid.as_bytes();
    assert_eq!(uid.len(), 36, "{uid}");
    assert_eq!(
        (b[8], b[13], b[14], b[18], b[23]),
        (b'-', b'-', b'1', b'-', b'-'),
        "{uid}"
    );
    assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{uid}");
    // Its time is now (within a minute).
    let hex: String = [&uid[15..18], &uid[9..13], &uid[..8]].concat();
    let t100ns = u64::from_str_radix(&hex, 16)?;
    let ms = (t100ns - 0x01B2_1DD2_1381_4000) / 10_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    assert!(now.abs_diff(ms) < 60_000, "{uid}: {ms} vs {now}");
    Ok(p["payload"].clone())
}

#[tokio::test]
async fn the_protocols_scenario_and_its_error_paths() -> Result<()> {
    let relay = start().await?;
    let addr = relay.addr("egg");
    let url = format!("http://{addr}");
    // The open packet announces the original's heartbeat (socket.io 2.1.1 defaults).
    let (_, open) = relay_tests::get(addr, "/socket.io/?EIO=3&transport=polling").await?;
    assert!(
        open.contains(r#""pingInterval":25000,"pingTimeout":5000"#),
        "{open}"
    );
    let mut d = SioDriver::start().await?;
    let a = connect(&mut d, "a", &url).await?;
    let b = connect(&mut d, "b", &url).await?;

    // sendToOthers reaches B only with B's socketId + userId.
    d.emit(
        "a",
        "requestMessage",
        envelope(
            "sendToOthers",
            &b["userId"],
            &b["socketId"],
            json!({"hello": 1}),
        ),
        false,
    )
    .await?;
    let m = d.next("b", "event", Some("responseMessage")).await?;
    assert_eq!(
        m["args"][0]["data"],
        json!({"action": "exchange", "payload": {"hello": 1}})
    );
    d.emit(
        "a",
        "requestMessage",
        envelope(
            "sendToOthers",
            &a["userId"],
            &b["socketId"],
            json!("wrong pair"),
        ),
        false,
    )
    .await?;

    // B reconnects: a new socket, then it rebinds its first userId.
    d.send(json!({"op": "close", "name": "b"})).await?;
    let b2 = connect(&mut d, "b2", &url).await?;
    assert_ne!(b2["userId"], b["userId"]);
    d.emit(
        "b2",
        "requestMessage",
        envelope(
            "reconnectAndUpdates",
            &b["userId"],
            &b2["socketId"],
            Value::Null,
        ),
        false,
    )
    .await?;
    let m = d.next("b2", "event", Some("responseMessage")).await?;
    assert_eq!(
        m["args"][0]["data"],
        json!({"action": "reconnectUpdated", "payload": "socket userid updated!"})
    );

    // The backend pushes to B's new socket with its old userId.
    let body = json!({"timestamp": TS, "app": APP, "target": b2["socketId"], "userId": b["userId"], "sign": SIGN, "message": {"text": "hi"}});
    let (s, r) = http(
        addr,
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(s, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&r)?,
        json!({"status": 200, "success": true, "message": "转发成功"})
    );
    let m = d.next("b2", "event", Some("responseMessage")).await?;
    assert_eq!(
        m["args"][0]["data"],
        json!({"action": "exchange", "payload": "{\"text\":\"hi\"}"}),
        "payload is a JSON string"
    );
    // The wrong-pair message earlier never reached anyone.
    assert!(
        !d.sees_within(std::time::Duration::from_millis(200), |v| v["args"][0]
            ["data"]["payload"]
            == "wrong pair")
            .await?
    );

    // Unknown target → 500; invalid body → 422; bad sign → refused.
    let mut unknown = body.clone();
    unknown["target"] = json!("nobody");
    let (s, r) = http(
        addr,
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        unknown.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&r)?["message"].clone()),
        (500, json!("转发失败 ID: nobody 不存在"))
    );
    let (s, r) = http(
        addr,
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        br#"{"timestamp":"x"}"#,
    )
    .await?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&r)?["message"].clone()),
        (422, json!("Validation Failed"))
    );
    let mut forged = body.clone();
    forged["sign"] = json!("0000");
    let (s, _) = http(
        addr,
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        forged.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(s, 401);

    // A bad sign on a packet: the exchange notice, then disconnected; the packet is dropped.
    let mut bad = envelope(
        "sendToOthers",
        &b["userId"],
        &b2["socketId"],
        json!("forged"),
    );
    bad[0]["meta"]["sign"] = json!("bad");
    d.emit("a", "requestMessage", bad, false).await?;
    let m = d.next("a", "event", Some("responseMessage")).await?;
    assert_eq!(
        m["args"][0]["data"]["payload"],
        format!(
            "Illegal signature, disconnected client {}",
            a["socketId"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(
        d.next("a", "disconnect", None).await?["reason"],
        "io server disconnect"
    );
    assert!(
        !d.sees_within(std::time::Duration::from_millis(300), |v| v["args"][0]
            ["data"]["payload"]
            == "forged")
            .await?
    );
    d.exit().await
}
