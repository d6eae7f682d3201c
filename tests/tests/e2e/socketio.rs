//! The Socket.IO profile against real socket.io-client 2.x (Engine.IO v3) and 4.x
//! (Engine.IO v4) processes, plus raw Engine.IO requests for exact wire checks.

use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use relay::hub::Presence;
use relay_tests::sio::SioDriver;
use relay_tests::{get, http, http_with, TestRelay};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Tenant `chat` (open policy, socket.io, namespaces `/` and `/admin`) on a ws listener
/// that also serves HTTP ingress, as seed 003 does on one port.
fn config(tenant_extra: &str) -> String {
    config_with("policy = \"open\"", tenant_extra)
}

fn config_with(policy: &str, tenant_extra: &str) -> String {
    format!(
        r#"
[[tenant]]
name = "chat"
{policy}
profile = "socket.io"
namespaces = ["/", "/admin"]
{tenant_extra}

[[listener]]
name = "sio"
kind = "ws"
http_ingress = true
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "chat" }}]
"#
    )
}

async fn start(extra: &str) -> Result<(TestRelay, String)> {
    let relay = TestRelay::start(&config(extra)).await?;
    let url = format!("http://{}", relay.addr("sio"));
    Ok((relay, url))
}

#[tokio::test]
async fn default_transports_upgrade_and_everything_round_trips() -> Result<()> {
    let (relay, url) = start("").await?;
    let mut d = SioDriver::start().await?;
    for (name, version) in [("v2", 2), ("v4", 4)] {
        let c = d.connect(name, version, &url, json!({})).await?;
        assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()), "{c}");
        // Join while (most likely) still polling: the room survives the upgrade.
        d.emit(
            name,
            "join",
            json!([{"room": format!("room-{name}")}]),
            false,
        )
        .await?;
        let joined = d.next(name, "event", Some("joined")).await?;
        assert_eq!(joined["args"][0]["rooms"], json!([format!("room-{name}")]));
        d.wait_transport(name, "websocket").await?;

        // Client ack answered by the policy's reply.
        d.emit(name, "echo", json!([{"data": "héllo 😀"}]), true)
            .await?;
        let ack = d.next(name, "ack", Some("echo")).await?;
        assert_eq!(ack["args"], json!([{"event": "echo", "data": "héllo 😀"}]));

        // Backend push to the room over HTTP ingress reaches the upgraded socket.
        let (status, body) = get(
            relay.addr("sio"),
            &format!("/push?room=room-{name}&event=news&data=hi"),
        )
        .await?;
        assert_eq!(
            (status, body.contains("\"online\":1")),
            (200, true),
            "{body}"
        );
        let news = d.next(name, "event", Some("news")).await?;
        assert_eq!(news["args"], json!([{"event": "news", "data": "hi"}]));

        // Server → client ack: the client's answer reaches the event hook.
        d.send(json!({"op": "answer", "name": name, "args": ["yes", 42]}))
            .await?;
        d.emit(name, "ask", json!([{"id": 7, "data": "ready?"}]), false)
            .await?;
        let q = d.next(name, "event", Some("question")).await?;
        assert_eq!(
            (q["args"].clone(), q["wantsAck"].clone()),
            (json!(["ready?"]), json!(true))
        );
        let a = d.next(name, "event", Some("answered")).await?;
        assert_eq!(a["args"][0]["id"], 7);
        assert_eq!(a["args"][0]["args"], json!(["yes", 42]));
    }
    d.exit().await?;
    relay
        .eventually("sessions end", |r| r.metric("connections_open") == 0)
        .await?;
    Ok(())
}

#[tokio::test]
async fn websocket_only_and_polling_only_clients() -> Result<()> {
    let (_relay, url) = start("").await?;
    let mut d = SioDriver::start().await?;
    for version in [2, 4] {
        for transport in ["websocket", "polling"] {
            let name = format!("{transport}{version}");
            let c = d
                .connect(&name, version, &url, json!({"transports": [transport]}))
                .await?;
            assert_eq!(c["transport"], transport, "{c}");
            d.emit(&name, "echo", json!([{"data": [1, {"x": null}]}]), true)
                .await?;
            let ack = d.next(&name, "ack", Some("echo")).await?;
            assert_eq!(ack["args"][0]["data"], json!([1, {"x": null}]));
        }
    }
    d.exit().await
}

#[tokio::test]
async fn binary_payloads_both_ways_on_both_transports() -> Result<()> {
    let (_relay, url) = start("").await?;
    let mut d = SioDriver::start().await?;
    let blob = json!({"$binary": "AAEC/f7/"}); // bytes 0,1,2,253,254,255
    for version in [2, 4] {
        for transport in ["polling", "websocket"] {
            let name = format!("{transport}{version}");
            d.connect(&name, version, &url, json!({"transports": [transport]}))
                .await?;
            d.emit(
                &name,
                "echo",
                json!([{"data": {"file": blob.clone(), "name": "f.bin"}}]),
                true,
            )
            .await?;
            let ack = d.next(&name, "ack", Some("echo")).await?;
            assert_eq!(
                ack["args"][0]["data"],
                json!({"file": blob.clone(), "name": "f.bin"}),
                "{name}"
            );
        }
    }
    // A binary message fanned out to a room reaches a v2 polling and a v4 websocket client.
    d.emit("polling2", "join", json!([{"room": "bin"}]), false)
        .await?;
    d.next("polling2", "event", Some("joined")).await?;
    d.emit("websocket4", "join", json!([{"room": "bin"}]), false)
        .await?;
    d.next("websocket4", "event", Some("joined")).await?;
    d.emit(
        "polling4",
        "emit",
        json!([{"room": "bin", "data": blob.clone()}]),
        false,
    )
    .await?;
    for name in ["polling2", "websocket4"] {
        let m = d.next(name, "event", Some("message")).await?;
        assert_eq!(m["args"][0]["data"], blob, "{name}");
    }
    d.exit().await
}

#[tokio::test]
async fn a_room_mixes_v2_and_v4_clients() -> Result<()> {
    let (relay, url) = start("").await?;
    let mut d = SioDriver::start().await?;
    d.connect("old", 2, &url, json!({})).await?;
    d.connect("new", 4, &url, json!({})).await?;
    let admin = d
        .connect("adm", 4, &format!("{url}/admin"), json!({}))
        .await?;
    for n in ["old", "new", "adm"] {
        d.emit(n, "join", json!([{"room": "mix"}]), false).await?;
        d.next(n, "event", Some("joined")).await?;
    }
    let (status, body) = http(
        relay.addr("sio"),
        "POST",
        "/push",
        Some("application/json"),
        br#"{"room":"mix","event":"tick","data":{"n":1}}"#,
    )
    .await?;
    assert_eq!(
        (status, body.contains("\"online\":3")),
        (200, true),
        "{body}"
    );
    for n in ["old", "new", "adm"] {
        let m = d.next(n, "event", Some("tick")).await?;
        assert_eq!(
            m["args"],
            json!([{"event": "tick", "data": {"n": 1}}]),
            "{n}"
        );
    }
    // A client's emit to the room excluding itself.
    d.emit(
        "old",
        "emit",
        json!([{"room": "mix", "data": "from v2", "exclude_self": true}]),
        false,
    )
    .await?;
    for n in ["new", "adm"] {
        let m = d.next(n, "event", Some("message")).await?;
        assert_eq!(m["args"][0]["data"], "from v2");
    }
    assert!(
        !d.sees_within(Duration::from_millis(300), |v| v["name"] == "old"
            && v["event"] == "message")
            .await?,
        "the sender was excluded"
    );
    assert!(admin["id"].is_string());
    d.exit().await
}

#[tokio::test]
async fn rejected_connect_reaches_the_client_as_an_error() -> Result<()> {
    let (_relay, url) = start("settings = { require_user = true }").await?;
    let mut d = SioDriver::start().await?;
    d.send(json!({"op": "connect", "name": "v4", "version": 4, "url": url, "opts": {"reconnection": false}}))
        .await?;
    let e = d.next("v4", "connect_error", None).await?;
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("user")),
        "CONNECT_ERROR carries the policy's reason: {e}"
    );
    d.send(json!({"op": "connect", "name": "v2", "version": 2, "url": url, "opts": {"reconnection": false}}))
        .await?;
    let e = d.next("v2", "error", None).await?;
    // socket.io 2.x hands the error packet's data to the `error` event.
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("user")),
        "{e}"
    );
    // With a user the same tenant accepts, and an unknown namespace is refused.
    d.connect("ok", 4, &format!("{url}?user=bob"), json!({}))
        .await?;
    d.emit("ok", "whoami", json!([{}]), true).await?;
    let who = d.next("ok", "ack", Some("whoami")).await?;
    assert_eq!(who["args"][0]["user"], "bob");
    d.send(json!({"op": "connect", "name": "nsp", "version": 4, "url": format!("{url}/nope?user=x"), "opts": {"reconnection": false}}))
        .await?;
    let e = d.next("nsp", "connect_error", None).await?;
    assert_eq!(e["message"], "Invalid namespace");
    d.exit().await
}

#[tokio::test]
async fn clients_reconnect_after_the_server_drops_them() -> Result<()> {
    let (relay, url) = start("").await?;
    let mut d = SioDriver::start().await?;
    let first2 = d.connect("v2", 2, &url, json!({})).await?;
    let first4 = d.connect("v4", 4, &url, json!({})).await?;
    d.wait_transport("v2", "websocket").await?;
    d.wait_transport("v4", "websocket").await?;
    let tenant = relay.running.node.tenants["chat"].clone();
    assert_eq!(tenant.hub.all().len(), 2);
    for h in tenant.hub.all() {
        h.link.abort(1011); // what a crashing backend node or a network cut looks like
    }
    for (name, first) in [("v2", &first2), ("v4", &first4)] {
        let gone = d.next(name, "disconnect", None).await?;
        assert!(
            gone["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("transport")),
            "{gone}"
        );
        let again = d.next(name, "connect", None).await?;
        assert_ne!(again["id"], first["id"], "a new session");
        d.emit(name, "echo", json!([{"data": 1}]), true).await?;
        d.next(name, "ack", Some("echo")).await?;
    }
    // A server-side `close` action is a deliberate disconnect: no reconnection.
    d.emit("v4", "close", json!([{"code": 4000}]), false)
        .await?;
    let gone = d.next("v4", "disconnect", None).await?;
    assert_eq!(gone["reason"], "io server disconnect");
    assert!(
        !d.sees_within(Duration::from_millis(500), |v| v["name"] == "v4"
            && v["type"] == "connect")
            .await?
    );
    d.exit().await
}

#[tokio::test]
async fn ping_timeout_ends_silent_sessions_and_live_clients_stay() -> Result<()> {
    let (relay, url) = start("ping_interval_ms = 200\nping_timeout_ms = 300").await?;
    let addr = relay.addr("sio");
    // A raw v4 polling session that joins a room and then never answers a ping.
    let (status, body) = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
    assert_eq!(status, 200);
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap_or(&body))?;
    assert_eq!(
        (
            &open["pingInterval"],
            &open["pingTimeout"],
            &open["upgrades"]
        ),
        (&json!(200), &json!(300), &json!(["websocket"]))
    );
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let q = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (s, b) = http(
        addr,
        "POST",
        &q,
        Some("text/plain"),
        b"40\x1e42[\"join\",{\"room\":\"quiet\"}]",
    )
    .await?;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let (_, b) = get(addr, &q).await?;
    assert!(b.starts_with("40{\"sid\":\""), "{b}");
    let tenant = relay.running.node.tenants["chat"].clone();
    relay
        .eventually("joined", |_| tenant.hub.room_count("quiet") == 1)
        .await?;

    // Real clients answer (v4) or send (v2) pings and stay connected meanwhile.
    let mut d = SioDriver::start().await?;
    d.connect("v2", 2, &url, json!({})).await?;
    d.connect("v4", 4, &url, json!({"transports": ["websocket"]}))
        .await?;

    relay
        .eventually("the silent session is gone and its room left", |_| {
            tenant.hub.room_count("quiet") == 0
        })
        .await?;
    let (s, b) = get(addr, &q).await?;
    assert_eq!(
        (s, b.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
    assert!(
        !d.sees_within(Duration::from_millis(1200), |v| v["type"] == "disconnect")
            .await?,
        "clients that keep the heartbeat stay connected"
    );
    d.emit("v2", "echo", json!([{"data": "still here"}]), true)
        .await?;
    d.next("v2", "ack", Some("echo")).await?;
    d.exit().await
}

#[tokio::test]
async fn engine_io_wire_details_and_errors() -> Result<()> {
    let (relay, _url) = start("").await?;
    let addr = relay.addr("sio");
    // Errors in the protocol's own shape.
    for (path, want) in [
        (
            "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
        (
            "/socket.io/?EIO=5&transport=polling",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
    ] {
        let (s, b) = get(addr, path).await?;
        assert_eq!((s, b.as_str()), (400, want), "{path}");
    }
    // v3 polling handshake: length-prefixed open packet, then the implicit `/` connect.
    let (s, b) = get(addr, "/socket.io/?EIO=3&transport=polling&b64=1").await?;
    assert_eq!(s, 200);
    let (len, packet) = b.split_once(':').unwrap_or_default();
    assert_eq!(len.parse::<usize>()?, packet.encode_utf16().count());
    let open: Value = serde_json::from_str(packet.strip_prefix('0').unwrap_or(packet))?;
    assert!(open.get("maxPayload").is_none(), "v3 has no maxPayload");
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let q = format!("/socket.io/?EIO=3&transport=polling&b64=1&sid={sid}");
    let (_, b) = get(addr, &q).await?;
    assert_eq!(b, "2:40");
    // v3 client ping → pong.
    let (s, _) = http(addr, "POST", &q, Some("text/plain;charset=UTF-8"), b"1:2").await?;
    assert_eq!(s, 200);
    let (_, b) = get(addr, &q).await?;
    assert_eq!(b, "1:3");
    // A malformed payload closes the session with a clear answer.
    let (s, b) = http(addr, "POST", &q, Some("text/plain"), b"9:42[").await?;
    assert_eq!(
        (s, b.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );
    relay
        .eventually("session closed", |r| r.metric("connections_open") == 0)
        .await?;

    // CORS for browsers: a preflight answered; with no origins listed, any origin may
    // connect, but without credentials (cookies go only to listed origins).
    let (s, h, _) = http_with(
        addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    )
    .await?;
    assert_eq!(s, 204);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(!h.contains_key("access-control-allow-credentials"), "{h:?}");

    // WebSocket-only session: open packet without upgrades, exact v4 frames.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    let text = |m: Option<Result<WsMessage, _>>| match m {
        Some(Ok(WsMessage::Text(t))) => t.to_string(),
        other => format!("{other:?}"),
    };
    let first = text(ws.next().await);
    assert!(
        first.starts_with("0{") && first.contains(r#""upgrades":[]"#),
        "{first}"
    );
    ws.send(WsMessage::Text("40".into())).await?;
    let connected = text(ws.next().await);
    assert!(connected.starts_with(r#"40{"sid":""#), "{connected}");
    ws.send(WsMessage::Text(r#"421["echo",{"data":true}]"#.into()))
        .await?;
    assert_eq!(
        text(ws.next().await),
        r#"431[{"event":"echo","data":true}]"#
    );
    ws.send(WsMessage::Text(r#"40/admin,{"token":"t"}"#.into()))
        .await?;
    assert!(text(ws.next().await).starts_with(r#"40/admin,{"sid":""#));
    ws.send(WsMessage::Text(r#"42/admin,["whoami",{}]"#.into()))
        .await?;
    assert!(text(ws.next().await).starts_with(r#"42/admin,["whoami",{"event":"whoami","conn":"#));
    // Garbage closes the WebSocket with a protocol error.
    ws.send(WsMessage::Text("4x".into())).await?;
    let mut closed = None;
    while let Some(m) = ws.next().await {
        if let Ok(WsMessage::Close(f)) = m {
            closed = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed, Some(1002));
    Ok(())
}

#[tokio::test]
async fn a_wasm_plugin_sees_namespace_auth_and_event_arguments() -> Result<()> {
    let relay = TestRelay::start(&config_with(
        "policy = \"wasm\"\nplugin = \"bundled:testkit\"",
        "",
    ))
    .await?;
    let url = format!("http://{}", relay.addr("sio"));
    let mut d = SioDriver::start().await?;
    d.connect("ann", 4, &url, json!({"auth": {"user": "ann"}}))
        .await?;
    let w = d.next("ann", "event", Some("welcome")).await?;
    assert_eq!(
        w["args"],
        json!([{"event": "welcome", "namespace": "/", "auth": {"user": "ann"}}])
    );
    d.emit("ann", "whoami", json!([]), true).await?;
    let me = d.next("ann", "ack", Some("whoami")).await?;
    assert_eq!(
        (&me["args"][0]["user"], &me["args"][0]["authenticated"]),
        (&json!("ann"), &json!(true))
    );
    // The plugin sees the raw packet text and the arguments as a JSON array.
    d.emit("ann", "echo", json!(["a", 1]), true).await?;
    let e = d.next("ann", "ack", Some("echo")).await?;
    assert_eq!(e["args"][0]["text"], r#"21["echo","a",1]"#);

    d.connect("old", 2, &format!("{url}/admin?user=bob"), json!({}))
        .await?;
    let w = d.next("old", "event", Some("welcome")).await?;
    assert_eq!(w["args"][0]["namespace"], "/admin");
    assert_eq!(w["args"][0]["auth"], Value::Null);

    d.send(json!({"op": "connect", "name": "no", "version": 4, "url": format!("{url}?reject=1"), "opts": {"reconnection": false}}))
        .await?;
    let e = d.next("no", "connect_error", None).await?;
    assert_eq!(e["message"], "Forbidden");
    d.exit().await
}

#[tokio::test]
async fn limits_and_origins() -> Result<()> {
    let relay = TestRelay::start(
        r#"
[[tenant]]
name = "chat"
policy = "open"
profile = "socket.io"
max_message_bytes = 1000

[[listener]]
name = "sio"
kind = "ws"
bind = "127.0.0.1:0"
max_body_bytes = 2000
allowed_origins = ["https://app.example"]
routes = [{ path = "/", tenant = "chat" }]
"#,
    )
    .await?;
    let addr = relay.addr("sio");
    let handshake = "/socket.io/?EIO=4&transport=polling";
    // Origins: a foreign page is refused in Engine.IO's shape; the allowed one gets CORS.
    let (s, _, b) = http_with(
        addr,
        "GET",
        handshake,
        &[("origin", "https://evil.example")],
        b"",
    )
    .await?;
    assert_eq!(
        (s, &b[..]),
        (403, &br#"{"code":4,"message":"Forbidden"}"#[..])
    );
    let (s, h, b) = http_with(
        addr,
        "GET",
        handshake,
        &[("origin", "https://app.example")],
        b"",
    )
    .await?;
    assert_eq!(
        (s, &h["access-control-allow-origin"]),
        (200, &"https://app.example".parse::<http::HeaderValue>()?)
    );
    assert_eq!(
        h["access-control-allow-credentials"], "true",
        "a listed origin"
    );
    let open: Value = serde_json::from_slice(&b[1..])?;
    assert_eq!(
        open["maxPayload"], 1000,
        "maxPayload tells clients the message limit"
    );

    // A polling body over max_body_bytes: 413, and the session is closed.
    let q = format!(
        "{handshake}&sid={}",
        open["sid"].as_str().unwrap_or_default()
    );
    let big = format!("42[\"echo\",{{\"data\":\"{}\"}}]", "x".repeat(3000));
    let (s, _) = http(addr, "POST", &q, Some("text/plain"), big.as_bytes()).await?;
    assert_eq!(s, 413);
    relay
        .eventually("session closed", |r| r.metric("connections_open") == 0)
        .await?;

    // A WebSocket message over max_message_bytes closes with 1009.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    ws.next().await; // open packet
    ws.send(WsMessage::Text("40".into())).await?;
    ws.next().await; // connected
    ws.send(WsMessage::Text(big)).await?;
    let mut code = None;
    while let Some(m) = ws.next().await {
        if let Ok(WsMessage::Close(f)) = m {
            code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(code, Some(1009));
    Ok(())
}

#[tokio::test]
async fn an_upgraded_session_keeps_its_rooms_and_identity() -> Result<()> {
    let (relay, _url) = start("").await?;
    let addr = relay.addr("sio");
    let (_, body) = get(addr, "/socket.io/?EIO=4&transport=polling&user=zoe").await?;
    let open: Value = serde_json::from_str(&body[1..])?;
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let q = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    http(addr, "POST", &q, Some("text/plain"), b"40").await?;
    let (_, b) = get(addr, &q).await?;
    assert!(b.starts_with("40{"), "{b}");
    http(
        addr,
        "POST",
        &q,
        Some("text/plain"),
        br#"42["join",{"room":"up"}]"#,
    )
    .await?;
    let (_, b) = get(addr, &q).await?;
    assert_eq!(b, r#"42["joined",{"event":"joined","rooms":["up"]}]"#);

    // Upgrade: probe, then `5`; a poll pending meanwhile is released with a noop.
    let pending = tokio::spawn({
        let q = q.clone();
        async move { get(addr, &q).await }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await?;
    ws.send(WsMessage::Text("2probe".into())).await?;
    match ws.next().await {
        Some(Ok(WsMessage::Text(t))) => assert_eq!(t.as_str(), "3probe"),
        other => panic!("expected 3probe, got {other:?}"),
    }
    let (s, b) = pending.await??;
    assert_eq!((s, b.as_str()), (200, "6"));
    ws.send(WsMessage::Text("5".into())).await?;

    // Rooms and identity survived: a push to the room arrives over the WebSocket.
    let (s, body) = get(addr, "/push?room=up&event=news&data=1").await?;
    assert_eq!((s, body.contains("\"online\":1")), (200, true), "{body}");
    match ws.next().await {
        Some(Ok(WsMessage::Text(t))) => {
            assert_eq!(t.as_str(), r#"42["news",{"event":"news","data":"1"}]"#)
        }
        other => panic!("expected the push, got {other:?}"),
    }
    ws.send(WsMessage::Text(r#"421["whoami",{}]"#.into()))
        .await?;
    match ws.next().await {
        Some(Ok(WsMessage::Text(t))) => assert!(t.contains(r#""user":"zoe""#), "{t}"),
        other => panic!("expected whoami, got {other:?}"),
    }
    // Polling is over for this session.
    let (s, _) = get(addr, &q).await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test]
async fn polling_posts_are_bounded_in_time_and_by_the_message_limit() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = config("max_message_bytes = 1000").replace(
        "name = \"sio\"\nkind = \"ws\"",
        "name = \"sio\"\nkind = \"ws\"\nhandshake_timeout_ms = 300",
    );
    let relay = TestRelay::start(&cfg).await?;
    let addr = relay.addr("sio");

    // A POST announcing 100 bytes and sending 10 is cut with 408 after the timeout,
    // and the connection (with its slot) is let go.
    let q = polling_session(addr).await?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {q} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n40\x1e42[\"ech"
    );
    s.write_all(head.as_bytes()).await?;
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await??;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A packet over max_message_bytes is refused (as WebSocket closes with 1009) and
    // ends the session; one within it goes through.
    let q = polling_session(addr).await?;
    let (s, b) = http(addr, "POST", &q, Some("text/plain"), b"40").await?;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let big = format!("42[\"echo\",{{\"data\":\"{}\"}}]", "x".repeat(1200));
    let (s, _) = http(addr, "POST", &q, Some("text/plain"), big.as_bytes()).await?;
    assert_eq!(s, 413);
    let (s, b) = get(addr, &q).await?;
    assert!(
        s == 400 || b.ends_with('1'),
        "the session ended after the oversized packet: {s} {b}"
    );
    Ok(())
}

#[tokio::test]
async fn a_binary_event_and_its_attachments_must_fit_the_message_limit_together() -> Result<()> {
    let relay =
        TestRelay::start(&config("max_message_bytes = 1000\nping_interval_ms = 300")).await?;
    let addr = relay.addr("sio");
    let q = polling_session(addr).await?;
    // No CONNECT: a binary event announcing three attachments of 600 bytes each. Each
    // fits the limit; together they do not, so the session ends at the second.
    let att = format!("b{}", base64_of(&[7u8; 600]));
    let mut payload = String::from("453-[\"e\",{\"_placeholder\":true,\"num\":0}]");
    for _ in 0..3 {
        payload.push('\x1e');
        payload.push_str(&att);
    }
    let (s, b) = http(addr, "POST", &q, Some("text/plain"), payload.as_bytes()).await?;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let (s, b) = get(addr, &q).await?;
    assert!(
        s == 400 || b.ends_with('1'),
        "the session ended (close packet or unknown sid), not pinged: {s} {b}"
    );
    Ok(())
}

/// Open a raw Engine.IO v4 polling session; its polling path, `sid` included.
async fn polling_session(addr: std::net::SocketAddr) -> Result<String> {
    let (status, body) = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
    anyhow::ensure!(status == 200, "open: {status} {body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap_or(&body))?;
    Ok(format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().unwrap_or_default()
    ))
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_client_close_packet_ends_the_session_and_frees_its_transport() -> Result<()> {
    let (relay, _) = start("").await?;
    let addr = relay.addr("sio");

    // WebSocket: after the client's `1`, relay closes the socket itself.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    let first = ws.next().await;
    assert!(
        matches!(&first, Some(Ok(WsMessage::Text(t))) if t.starts_with("0{")),
        "{first:?}"
    );
    ws.send(WsMessage::Text("1".into())).await?;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if matches!(m, Ok(WsMessage::Close(_)) | Err(_)) {
                return true;
            }
        }
        true
    })
    .await;
    assert_eq!(ended.ok(), Some(true), "the WebSocket was left open");
    relay
        .eventually("no session left", |r| r.metric("connections_open") == 0)
        .await?;

    // Polling: a poll waiting when the client sends `1` is answered with a noop; the
    // session is gone for what follows.
    let q = polling_session(addr).await?;
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { get(addr, &q).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, b) = http(addr, "POST", &q, Some("text/plain"), b"1").await?;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let (s, b) = waiting.await??;
    assert_eq!((s, b.as_str()), (200, "6"));
    let (s, _) = get(addr, &q).await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test]
async fn a_second_concurrent_poll_is_refused_and_ends_the_session() -> Result<()> {
    let (relay, _) = start("").await?;
    let addr = relay.addr("sio");
    let q = polling_session(addr).await?;
    let first = tokio::spawn({
        let q = q.clone();
        async move { get(addr, &q).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _) = get(addr, &q).await?;
    assert_eq!(s, 400, "the second poll");
    let (s, b) = tokio::time::timeout(Duration::from_secs(5), first).await???;
    assert_eq!(
        (s, b.as_str()),
        (200, "1"),
        "the first poll learns of the close"
    );
    let (s, _) = get(addr, &q).await?;
    assert_eq!(s, 400, "the session is gone");
    Ok(())
}

#[tokio::test]
async fn polling_sessions_count_against_the_listeners_connection_limits() -> Result<()> {
    let cfg = config("").replace(
        "name = \"sio\"\nkind = \"ws\"",
        "name = \"sio\"\nkind = \"ws\"\nmax_connections_per_ip = 4",
    );
    let relay = TestRelay::start(&cfg).await?;
    let addr = relay.addr("sio");
    // Each request on a connection of its own that closes after it: a session holds a
    // place of its own, besides the connection that carries a request (4 = 3 sessions
    // and the connection asking for a fourth). A closed connection gives its place back
    // a moment after the client sees its response, hence the retries.
    let open_one = || async {
        for _ in 0..50 {
            if let Ok(q) = polling_session(addr).await {
                return anyhow::Ok(q);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::bail!("no session could be opened")
    };
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(open_one().await?);
    }
    let (s, body) = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
    assert_eq!(s, 503, "a fourth session from the same address: {body}");
    assert!(body.contains("max_connections_per_ip"), "{body}");
    // A session that ends gives its place back (a client's close over polling: once its
    // last poll has been answered).
    let (s, _) = http(addr, "POST", &sessions[0], Some("text/plain"), b"1").await?;
    assert_eq!(s, 200);
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = get(addr, &sessions[0]).await?;
        if last.0 != 503 {
            break; // 503: the POST's connection has not given its place back yet
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((last.0, last.1.as_str()), (200, "6"));
    let reopened = open_one().await?;
    assert!(
        reopened.contains("sid="),
        "the ended session's place was given back"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_engine_io_handshakes_get_the_reference_errors_and_other_paths_stay_ingress(
) -> Result<()> {
    let (relay, _) = start("").await?;
    let addr = relay.addr("sio");
    for (path, code) in [
        ("/socket.io/?transport=polling", 5),
        ("/socket.io/?EIO=abc&transport=polling", 5),
        ("/socket.io/", 0),
        ("/socket.io/?EIO=4", 0),
        ("/socket.io/?EIO=4&transport=abc", 0),
        ("/socket.io/?EIO=abc&transport=abc", 0),
    ] {
        let (s, b) = get(addr, path).await?;
        assert_eq!(s, 400, "{path}: {b}");
        let v: Value = serde_json::from_str(&b)?;
        assert_eq!(v["code"], code, "{path}: {b}");
    }
    let (s, b) = http(
        addr,
        "POST",
        "/socket.io/?EIO=4&transport=polling",
        Some("text/plain"),
        b"",
    )
    .await?;
    assert_eq!(s, 400, "{b}");
    assert_eq!(serde_json::from_str::<Value>(&b)?["code"], 2);
    // Not the Engine.IO path: HTTP ingress as before (the open policy's push).
    let (s, b) = get(addr, "/push?room=r&data=x").await?;
    assert_eq!(s, 200, "{b}");
    Ok(())
}

#[tokio::test]
async fn a_second_websocket_for_a_session_is_accepted_and_closed() -> Result<()> {
    let (relay, _) = start("").await?;
    let addr = relay.addr("sio");
    let (_, body) = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap_or(&body))?;
    let sid = open["sid"].as_str().unwrap_or_default().to_owned();
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let closed_soon = |mut ws: tokio_tungstenite::WebSocketStream<_>| async move {
        tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = ws.next().await {
                if matches!(m, Ok(WsMessage::Close(_)) | Err(_)) {
                    break;
                }
            }
        })
        .await
        .is_ok()
    };
    // The first WebSocket has not probed yet; a second one racing it is closed.
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await?;
    let (second, _) = tokio_tungstenite::connect_async(&url).await?;
    assert!(
        closed_soon(second).await,
        "the second WebSocket was left open"
    );
    // The first one upgrades as usual.
    first.send(WsMessage::Text("2probe".into())).await?;
    let probe = first.next().await;
    assert!(
        matches!(&probe, Some(Ok(WsMessage::Text(t))) if t.as_str() == "3probe"),
        "{probe:?}"
    );
    first.send(WsMessage::Text("5".into())).await?;
    first.send(WsMessage::Text("40".into())).await?;
    let connected = first.next().await;
    assert!(
        matches!(&connected, Some(Ok(WsMessage::Text(t))) if t.starts_with("40")),
        "{connected:?}"
    );
    // Once upgraded, another WebSocket is still accepted (no HTTP 400) and closed.
    let (third, _) = tokio_tungstenite::connect_async(&url).await?;
    assert!(
        closed_soon(third).await,
        "the WebSocket after the upgrade was left open"
    );
    Ok(())
}
