//! relay's own tests of what the official Socket.IO and Engine.IO protocol suites check
//! and of contract 0.6.0 (argument lists, bare Engine.IO, namespace patterns), on
//! `examples/conformance/suites.toml` with the `sio-reference` plugin: the config anyone
//! runs the official suites against (docs/socketio.md).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use relay_tests::sio::SioDriver;
use relay_tests::{get, http, http_with, TestRelay};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The suites' config, on an ephemeral port.
async fn start() -> Result<(TestRelay, SocketAddr)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/conformance/suites.toml");
    let text = std::fs::read_to_string(&path)?
        .replace("bind = \"127.0.0.1:3000\"", "bind = \"127.0.0.1:0\"")
        .replace(
            "[server]\ndata_dir = \"../../relay-data/conformance\"\n",
            "",
        );
    let relay = TestRelay::start(&text).await?;
    let addr = relay.addr("suites");
    Ok((relay, addr))
}

/// The next text or binary message, skipping pings (answered).
async fn next(ws: &mut Ws) -> Result<WsMessage> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        match m {
            Ok(Some(Ok(WsMessage::Text(t)))) if t.as_str() == "2" => {
                ws.send(WsMessage::Text("3".into())).await?;
            }
            Ok(Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))))) => return Ok(m),
            Ok(Some(Ok(_))) => {}
            other => bail!("no message: {other:?}"),
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    match next(ws).await? {
        WsMessage::Text(t) => Ok(t.as_str().to_owned()),
        other => bail!("expected text, got {other:?}"),
    }
}

async fn next_binary(ws: &mut Ws) -> Result<Vec<u8>> {
    match next(ws).await? {
        WsMessage::Binary(b) => Ok(b.to_vec()),
        other => bail!("expected binary, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, text: &str) -> Result<()> {
    Ok(ws.send(WsMessage::Text(text.into())).await?)
}

/// A Socket.IO v4 WebSocket connected to `/` (its CONNECT and `auth` packets read).
async fn sio(addr: SocketAddr) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    let open = next_text(&mut ws).await?;
    anyhow::ensure!(open.starts_with("0{"), "{open}");
    send(&mut ws, "40").await?;
    let c = next_text(&mut ws).await?;
    anyhow::ensure!(c.starts_with("40{"), "{c}");
    let auth = next_text(&mut ws).await?;
    anyhow::ensure!(auth == r#"42["auth",{}]"#, "{auth}");
    Ok(ws)
}

#[tokio::test]
async fn events_and_acks_carry_any_list_of_arguments() -> Result<()> {
    let (_relay, addr) = start().await?;
    let mut ws = sio(addr).await?;
    for (sent, back) in [
        (
            r#"42["message",1,"2",{"3":[true]}]"#,
            r#"42["message-back",1,"2",{"3":[true]}]"#,
        ),
        (r#"42["message",null]"#, r#"42["message-back",null]"#),
        (
            r#"42["message",null,"x",null]"#,
            r#"42["message-back",null,"x",null]"#,
        ),
        (r#"42["message"]"#, r#"42["message-back"]"#),
        // Acknowledgements: the reference's `ack(...args)`.
        (
            r#"42456["message-with-ack",1,"2",{"3":[false]}]"#,
            r#"43456[1,"2",{"3":[false]}]"#,
        ),
        (r#"421["message-with-ack",null]"#, r#"431[null]"#),
        (r#"422["message-with-ack"]"#, r#"432[]"#),
    ] {
        send(&mut ws, sent).await?;
        assert_eq!(next_text(&mut ws).await?, back, "for {sent}");
    }
    // Binary attachments at any position, in an event and in an acknowledgement.
    for (sent, back) in [
        (
            r#"452-["message",{"_placeholder":true,"num":0},7,{"_placeholder":true,"num":1}]"#,
            r#"452-["message-back",{"_placeholder":true,"num":0},7,{"_placeholder":true,"num":1}]"#,
        ),
        (
            r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        ),
    ] {
        send(&mut ws, sent).await?;
        ws.send(WsMessage::Binary(vec![1u8, 2, 3])).await?;
        ws.send(WsMessage::Binary(vec![4u8, 5, 6])).await?;
        assert_eq!(next_text(&mut ws).await?, back, "for {sent}");
        assert_eq!(next_binary(&mut ws).await?, [1, 2, 3]);
        assert_eq!(next_binary(&mut ws).await?, [4, 5, 6]);
    }
    // Malformed packets close the connection, as the suite expects.
    for bad in ["4abc", "42{}", r#"42abc["message-with-ack",1]"#] {
        let mut ws = sio(addr).await?;
        send(&mut ws, bad).await?;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{bad} left the connection open");
    }
    Ok(())
}

#[tokio::test]
async fn real_clients_send_and_receive_argument_lists() -> Result<()> {
    let (_relay, addr) = start().await?;
    let url = format!("http://{addr}");
    let mut d = SioDriver::start().await?;
    for (name, version) in [("v2", 2), ("v4", 4)] {
        d.connect(name, version, &url, json!({})).await?;
        d.next(name, "event", Some("auth")).await?;
        d.emit(name, "message", json!([1, null, "2", {"3": [true]}]), false)
            .await?;
        let back = d.next(name, "event", Some("message-back")).await?;
        assert_eq!(back["args"], json!([1, null, "2", {"3": [true]}]), "{name}");
        d.emit(name, "message-with-ack", json!([null, "x"]), true)
            .await?;
        let ack = d.next(name, "ack", Some("message-with-ack")).await?;
        assert_eq!(ack["args"], json!([null, "x"]), "{name}");
    }
    d.exit().await
}

#[tokio::test]
async fn namespaces_connect_by_name_and_only_to_what_the_tenant_accepts() -> Result<()> {
    let (_relay, addr) = start().await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    next_text(&mut ws).await?;
    send(&mut ws, r#"40/custom,{"token":"abc"}"#).await?;
    assert!(next_text(&mut ws).await?.starts_with("40/custom,{\"sid\":"));
    assert_eq!(
        next_text(&mut ws).await?,
        r#"42/custom,["auth",{"token":"abc"}]"#
    );
    send(&mut ws, "40/random").await?;
    assert_eq!(
        next_text(&mut ws).await?,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    // Leaving /custom leaves / untouched.
    send(&mut ws, "40").await?;
    assert!(next_text(&mut ws).await?.starts_with("40{"));
    assert_eq!(next_text(&mut ws).await?, r#"42["auth",{}]"#);
    send(&mut ws, "41/custom").await?;
    send(&mut ws, r#"42["message","to /"]"#).await?;
    assert_eq!(next_text(&mut ws).await?, r#"42["message-back","to /"]"#);
    Ok(())
}

#[tokio::test]
async fn a_session_that_connects_no_namespace_ends_at_the_connect_timeout() -> Result<()> {
    let (_relay, addr) = start().await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    next_text(&mut ws).await?;
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(WsMessage::Text(t))) if t.as_str() == "2" => {
                    let _ = ws.send(WsMessage::Text("3".into())).await;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "left open");
    assert!(started.elapsed() >= Duration::from_millis(900));
    Ok(())
}

/// Open a bare Engine.IO polling session (`eio` 3 or 4); its polling path.
async fn eio_polling(addr: SocketAddr, eio: u8) -> Result<String> {
    let (status, body) = get(addr, &format!("/engine.io/?EIO={eio}&transport=polling")).await?;
    anyhow::ensure!(status == 200, "open: {status} {body}");
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |i| i + 1);
    let open: Value = serde_json::from_str(&body[start..end])?;
    Ok(format!(
        "/engine.io/?EIO={eio}&transport=polling&sid={}",
        open["sid"].as_str().unwrap_or_default()
    ))
}

#[tokio::test]
async fn bare_engine_io_echoes_text_and_binary_on_both_transports() -> Result<()> {
    let (_relay, addr) = start().await?;
    // Polling: a payload of text and binary packets comes back as it went.
    let q = eio_polling(addr, 4).await?;
    let payload = "4hello\u{1e}4€ and 😀\u{1e}bAQID";
    let (s, b) = http(addr, "POST", &q, Some("text/plain"), payload.as_bytes()).await?;
    assert_eq!((s, b.as_str()), (200, "ok"));
    let mut got = String::new();
    while got.len() < payload.len() {
        let (s, b) = get(addr, &q).await?;
        assert_eq!(s, 200);
        if !got.is_empty() {
            got.push('\u{1e}');
        }
        got.push_str(&b);
    }
    assert_eq!(got, payload);

    // WebSocket, v4 and v3 (engine.io-client 3.x).
    for eio in [4, 3] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "ws://{addr}/engine.io/?EIO={eio}&transport=websocket"
        ))
        .await?;
        assert!(next_text(&mut ws).await?.starts_with("0{"));
        send(&mut ws, "4hello").await?;
        assert_eq!(next_text(&mut ws).await?, "4hello");
        send(&mut ws, "4{\"not\":\"parsed\"}").await?;
        assert_eq!(next_text(&mut ws).await?, "4{\"not\":\"parsed\"}");
        let bin = if eio == 3 {
            vec![4u8, 1, 2, 3]
        } else {
            vec![1u8, 2, 3]
        };
        ws.send(WsMessage::Binary(bin.clone())).await?;
        assert_eq!(next_binary(&mut ws).await?, bin, "EIO={eio}");
    }

    // Upgrade from polling; a poll after the upgrade is refused, the socket carries on.
    let q = eio_polling(addr, 4).await?;
    let sid = q.rsplit('=').next().unwrap_or_default().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/engine.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await?;
    send(&mut ws, "2probe").await?;
    send(&mut ws, "5").await?;
    let (s, _) = get(addr, &q).await?;
    assert_eq!(s, 400, "a poll after the upgrade");
    send(&mut ws, "4hello").await?;
    assert_eq!(next_text(&mut ws).await?, "3probe");
    assert_eq!(next_text(&mut ws).await?, "4hello");
    Ok(())
}

#[tokio::test]
async fn a_polling_close_before_any_poll_is_answered_on_the_next_one() -> Result<()> {
    let (_relay, addr) = start().await?;
    for q in [eio_polling(addr, 4).await?, {
        let (s, body) = get(addr, "/socket.io/?EIO=4&transport=polling").await?;
        assert_eq!(s, 200);
        let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap_or(&body))?;
        format!(
            "/socket.io/?EIO=4&transport=polling&sid={}",
            open["sid"].as_str().unwrap_or_default()
        )
    }] {
        // No poll is waiting when the client's close arrives: the next poll gets the noop.
        let (s, b) = http(addr, "POST", &q, Some("text/plain"), b"1").await?;
        assert_eq!((s, b.as_str()), (200, "ok"));
        let (s, b) = get(addr, &q).await?;
        assert_eq!((s, b.as_str()), (200, "6"), "{q}");
        let (s, _) = get(addr, &q).await?;
        assert_eq!(s, 400, "{q}");
    }
    Ok(())
}

fn eio_config(policy: &str) -> String {
    format!(
        r#"
[[tenant]]
name = "eio"
{policy}
profile = "engine.io"

[[listener]]
name = "ws"
kind = "ws"
http_ingress = true
bind = "127.0.0.1:0"
routes = [{{ path = "/", tenant = "eio" }}]
"#
    )
}

#[tokio::test]
async fn a_bare_engine_io_handshake_is_decided_by_the_plugin() -> Result<()> {
    let relay = TestRelay::start(&eio_config(
        "policy = \"wasm\"\nplugin = \"bundled:testkit\"",
    ))
    .await?;
    let addr = relay.addr("ws");
    // Refused: the session opens (Engine.IO has answered) and is closed at once.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/engine.io/?EIO=4&transport=websocket&reject=1"
    ))
    .await?;
    let mut close = None;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.next().await {
            if let Ok(WsMessage::Close(c)) = m {
                close = c.map(|c| u16::from(c.code));
                break;
            }
        }
    })
    .await;
    assert_eq!(close, Some(1008), "a refused session is closed with 1008");

    // Accepted, in the rooms it asked for: a backend push reaches it as one Engine.IO
    // message (the JSON the plugin emitted, as text).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/engine.io/?EIO=4&transport=websocket&user=ann&rooms=lobby"
    ))
    .await?;
    next_text(&mut ws).await?;
    relay
        .eventually("ann joined", |r| r.metric("connections_open") == 1)
        .await?;
    let (s, b) = http(
        addr,
        "POST",
        "/push",
        Some("application/json"),
        br#"{"room":"lobby","data":"hi"}"#,
    )
    .await?;
    assert_eq!((s, b.contains("\"online\":1")), (200, true), "{b}");
    let got = next_text(&mut ws).await?;
    let v: Value = serde_json::from_str(got.strip_prefix('4').unwrap_or("?"))?;
    assert_eq!(v, json!({"event": "message", "data": "hi"}), "{got}");
    Ok(())
}

#[tokio::test]
async fn namespace_patterns_accept_names_and_the_event_hook_is_told_the_namespace() -> Result<()> {
    let relay = TestRelay::start(
        r#"
[[tenant]]
name = "rooms"
policy = "wasm"
plugin = "bundled:testkit"
profile = "socket.io"
namespaces = ["/", "/room-*"]

[[listener]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
routes = [{ path = "/", tenant = "rooms" }]
"#,
    )
    .await?;
    let addr = relay.addr("ws");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{addr}/socket.io/?EIO=4&transport=websocket"
    ))
    .await?;
    next_text(&mut ws).await?;
    send(&mut ws, "40/room-42,").await?;
    assert!(next_text(&mut ws)
        .await?
        .starts_with("40/room-42,{\"sid\":"));
    let w = next_text(&mut ws).await?;
    assert!(w.starts_with(r#"42/room-42,["welcome""#), "{w}");
    send(&mut ws, r#"42/room-42,1["echo","x"]"#).await?;
    let echo = next_text(&mut ws).await?;
    let body: Value = serde_json::from_str(echo.trim_start_matches("43/room-42,1"))?;
    assert_eq!(body[0]["namespace"], "/room-42", "{echo}");
    send(&mut ws, "40/roomy").await?;
    assert_eq!(
        next_text(&mut ws).await?,
        r#"44/roomy,{"message":"Invalid namespace"}"#
    );
    // A session may hold a bounded number of namespaces (16) at once.
    for i in 0..15 {
        send(&mut ws, &format!("40/room-{i},")).await?;
        assert!(next_text(&mut ws)
            .await?
            .starts_with(&format!("40/room-{i},")));
        next_text(&mut ws).await?; // welcome
    }
    send(&mut ws, "40/room-x,").await?;
    assert_eq!(
        next_text(&mut ws).await?,
        r#"44/room-x,{"message":"Too many namespaces"}"#
    );
    Ok(())
}

#[tokio::test]
async fn a_browser_may_try_any_method_and_gets_relays_own_answer() -> Result<()> {
    let (_relay, addr) = start().await?;
    let origin = [("origin", "http://localhost:8000")];
    // The preflight of a PUT allows it (as the reference's CORS does), so the browser
    // sends it and gets relay's 400 rather than a CORS failure.
    let (s, h, _) = http_with(
        addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("origin", "http://localhost:8000"),
            ("access-control-request-method", "PUT"),
        ],
        b"",
    )
    .await?;
    assert_eq!(s, 204);
    let allowed = h
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(allowed.contains("PUT"), "{allowed}");
    let (s, h, b) = http_with(
        addr,
        "PUT",
        "/socket.io/?EIO=4&transport=polling",
        &origin,
        b"",
    )
    .await?;
    assert_eq!(s, 400);
    assert_eq!(
        serde_json::from_slice::<Value>(&b)?,
        json!({"code": 2, "message": "Bad handshake method"})
    );
    // No origins listed: any page may connect, without credentials (the reference
    // servers' `cors: { origin: "*" }` answers the same).
    assert_eq!(
        h.get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("*")
    );
    assert!(h.get("access-control-allow-credentials").is_none());
    Ok(())
}
