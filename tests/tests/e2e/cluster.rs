//! Three relay nodes sharing one real `redis-server`: delivery across nodes through one
//! path, interest-based subscriptions, cluster-wide presence and push replies, and a
//! Redis restart in the middle.

use std::time::Duration;

use anyhow::Result;
use relay_tests::redis::RedisServer;
use relay_tests::{demo_config, get, ws, Client, TestRelay};
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// A relay with `config` that is node `name` of the cluster on `redis`.
pub(crate) async fn node(redis: &RedisServer, name: &str, config: &str) -> Result<TestRelay> {
    let config = format!(
        "[cluster]\nredis = {:?}\nnode = {name:?}\nnode_ttl_ms = 3000\ncommand_timeout_ms = 500\n{config}",
        redis.url(),
    );
    TestRelay::start(&config).await
}

/// `n` demo nodes.
async fn nodes(redis: &RedisServer, n: usize) -> Result<Vec<TestRelay>> {
    nodes_with(redis, n, &demo_config("")).await
}

/// `n` nodes with `config`, each in the cluster before the next starts.
pub(crate) async fn nodes_with(
    redis: &RedisServer,
    n: usize,
    config: &str,
) -> Result<Vec<TestRelay>> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = node(redis, &format!("n{i}"), config).await?;
        r.eventually("the node joined the cluster", |r| {
            r.metric("cluster_up") == 1
        })
        .await?;
        out.push(r);
    }
    Ok(out)
}

/// A client of `node` that has joined `room` (the answer comes once the node's
/// subscription is made).
async fn member(node: &TestRelay, room: &str) -> Result<Client<TcpStream>> {
    let mut c = ws(node.addr("ws"), "/").await?;
    c.send(json!({"event": "join", "room": room})).await?;
    assert_eq!(c.recv().await?, json!({"event": "joined", "rooms": [room]}));
    Ok(c)
}

/// A client of `node` logged in as `user`; returns it and its connection id.
async fn device(node: &TestRelay, user: &str) -> Result<(Client<TcpStream>, String)> {
    let mut c = ws(node.addr("ws"), "/").await?;
    c.send(json!({"event": "login", "user": user})).await?;
    let v = c.recv().await?;
    assert_eq!(v["ok"], true, "{v}");
    let id = v["conn"].as_str().unwrap_or_default().to_owned();
    Ok((c, id))
}

/// `GET /push?<query>` on `node`'s http listener, as JSON.
pub(crate) async fn push(node: &TestRelay, query: &str) -> Result<(u16, Value)> {
    let (status, body) = get(node.addr("http"), &format!("/push?{query}")).await?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_room_with_members_on_every_node_gets_each_push_once() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes(&redis, 3).await?;
    let mut members = Vec::new();
    for node in &n {
        members.push(member(node, "r").await?);
    }
    let (status, reply) = push(&n[0], "room=r&data=hello").await?;
    assert_eq!((status, &reply), (200, &json!({"ok": true, "online": 3})));
    for m in &mut members {
        assert_eq!(m.recv().await?["data"], "hello");
    }
    // A publication to two rooms reaches a member of both once.
    let mut both = member(&n[1], "s").await?;
    both.send(json!({"event": "join", "room": "r"})).await?;
    both.recv().await?;
    push(&n[2], "rooms=r,s&data=twice").await?;
    assert_eq!(both.recv().await?["data"], "twice");
    both.expect_silence(Duration::from_millis(300)).await?;
    for m in &mut members {
        assert_eq!(m.recv().await?["data"], "twice");
    }
    assert!(n[0].metric("cluster_cross_node_deliveries") >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_nodes_with_members_receive_a_rooms_publications() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes(&redis, 3).await?;
    let mut a = member(&n[0], "quiet").await?;
    let mut b = member(&n[1], "quiet").await?;
    let before: Vec<i64> = n.iter().map(|r| r.metric("cluster_received")).collect();
    for i in 0..5 {
        let (status, _) = push(&n[2], &format!("room=quiet&data={i}")).await?;
        assert_eq!(status, 200);
    }
    for i in 0..5 {
        assert_eq!(a.recv().await?["data"], i.to_string());
        assert_eq!(b.recv().await?["data"], i.to_string());
    }
    let got: Vec<i64> = n
        .iter()
        .zip(&before)
        .map(|(r, b)| r.metric("cluster_received") - b)
        .collect();
    assert_eq!(got, [5, 5, 0], "the node without members receives nothing");
    assert_eq!(n[2].metric("cluster_subscriptions"), 0);
    assert_eq!(n[0].metric("cluster_subscriptions"), 1);
    // The last member of node 1 leaves: it unsubscribes, and receives nothing more.
    b.send(json!({"event": "leave", "room": "quiet"})).await?;
    b.recv().await?;
    n[1].eventually("node 1 unsubscribed", |r| {
        r.metric("cluster_subscriptions") == 0
    })
    .await?;
    let before1 = n[1].metric("cluster_received");
    push(&n[2], "room=quiet&data=after").await?;
    assert_eq!(a.recv().await?["data"], "after");
    assert_eq!(n[1].metric("cluster_received"), before1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_on_two_nodes_and_a_connection_on_another_node_are_reached() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes(&redis, 3).await?;
    let (mut laptop, _) = device(&n[0], "ann").await?;
    let (mut phone, phone_id) = device(&n[1], "ann").await?;
    let (status, reply) = push(&n[2], "user=ann&data=hi").await?;
    assert_eq!((status, &reply), (200, &json!({"ok": true, "online": 2})));
    assert_eq!(laptop.recv().await?["data"], "hi");
    assert_eq!(phone.recv().await?["data"], "hi");
    // One connection, by id, from a node it is not on.
    let (status, reply) = push(&n[2], &format!("conn={phone_id}&data=direct")).await?;
    assert_eq!((status, &reply), (200, &json!({"ok": true, "online": 1})));
    assert_eq!(phone.recv().await?["data"], "direct");
    laptop.expect_silence(Duration::from_millis(200)).await?;
    let (_, reply) = push(&n[2], "conn=AAAAAAAAAAAAAAAAAAAA&data=nobody").await?;
    assert_eq!(reply["online"], 0);
    // Everyone, on every node.
    push(&n[2], "broadcast=1&data=all").await?;
    assert_eq!(laptop.recv().await?["data"], "all");
    assert_eq!(phone.recv().await?["data"], "all");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_is_cluster_wide_and_a_stopped_node_leaves_it() -> Result<()> {
    let redis = RedisServer::start().await?;
    let mut n = nodes(&redis, 3).await?;
    let mut asker = ws(n[0].addr("ws"), "/?user=ann").await?;
    let _b = member(&n[1], "p").await?;
    let _c = member(&n[2], "p").await?;
    asker
        .send(json!({"event": "presence", "room": "p"}))
        .await?;
    let p = asker.recv().await?;
    assert_eq!(p["count"], 2, "{p}");
    assert_eq!(p["members"].as_array().map(Vec::len), Some(2), "{p}");
    let (_, body) = get(n[0].addr("http"), "/presence?room=p").await?;
    assert_eq!(serde_json::from_str::<Value>(&body)?["count"], 2);
    // Offline storage decides on the cluster's answer: someone is online elsewhere.
    let (_, reply) = push(&n[0], "room=p&data=x&offline=1").await?;
    assert_eq!(reply, json!({"ok": true, "online": 2}));
    // A node that stops takes its connections out of every answer.
    let last = n.pop().expect("three nodes");
    last.running.stop().await;
    let (_, body) = get(n[0].addr("http"), "/presence?room=p").await?;
    assert_eq!(serde_json::from_str::<Value>(&body)?["count"], 1, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_fails_pushes_loudly_and_then_everything_is_restored() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let n = nodes(&redis, 2).await?;
    let mut a = member(&n[0], "r").await?;
    let mut b = member(&n[1], "r").await?;
    redis.stop();
    n[0].eventually("node 0 saw redis go", |r| r.metric("cluster_up") == 0)
        .await?;
    // No silent success: the push is answered with an error; node 0's member still
    // gets it (local delivery continues), node 1's cannot.
    let (status, reply) = push(&n[0], "room=r&data=during").await?;
    assert!(status >= 500, "{status} {reply}");
    assert_eq!(a.recv().await?["data"], "during");
    assert!(n[0].metric("cluster_publish_failed") >= 1);
    let (status, _) = get(n[0].addr("http"), "/healthz").await?;
    assert_eq!(status, 503);
    // Redis comes back empty: subscriptions and presence are made again, with no
    // client reconnecting.
    redis.restart().await?;
    for r in &n {
        r.eventually("the node is back", |r| r.metric("cluster_up") == 1)
            .await?;
    }
    let deadline = tokio::time::Instant::now() + relay_tests::WAIT;
    loop {
        let (status, reply) = push(&n[0], "room=r&data=after").await?;
        if status == 200 && reply["online"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {reply}");
        // Drain what this attempt delivered to node 0's member.
        let _ = a.recv_within(Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 1's member gets pushes again (skip what arrived while presence was rebuilt).
    loop {
        let v = b.recv().await?;
        if v["data"] == "after" {
            break;
        }
    }
    let (status, _) = get(n[0].addr("http"), "/healthz").await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_message_kept_through_one_node_is_delivered_once_by_another() -> Result<()> {
    let redis = RedisServer::start().await?;
    let n = nodes(&redis, 3).await?;
    let (status, reply) = push(&n[0], "user=bob&data=kept&offline=1").await?;
    assert_eq!(
        (status, &reply),
        (200, &json!({"ok": true, "online": 0, "stored": true}))
    );
    push(&n[0], "room=lobby&data=for-the-room&offline=1").await?;
    // Bob logs in on node 1 and gets it; his next device, on node 2, does not.
    // (The mailbox comes as part of logging in, before the login's own answer.)
    let mut phone = ws(n[1].addr("ws"), "/").await?;
    phone.send(json!({"event": "login", "user": "bob"})).await?;
    let got = phone.recv().await?;
    assert_eq!(
        (&got["data"], &got["offline"]),
        (&json!("kept"), &json!(true))
    );
    assert_eq!(phone.recv().await?["event"], "login");
    n[1].eventually("delivered and removed", |r| {
        r.metric("offline_delivered") == 1
    })
    .await?;
    let (mut laptop, _) = device(&n[2], "bob").await?;
    laptop.expect_silence(Duration::from_millis(300)).await?;
    // The room's mailbox goes to the room when someone joins it, on any node. (It is a
    // publication to the room, so it may overtake the join's own answer.)
    let mut m = ws(n[2].addr("ws"), "/").await?;
    m.send(json!({"event": "join", "room": "lobby"})).await?;
    let (first, second) = (m.recv().await?, m.recv().await?);
    let data: Vec<&Value> = [&first, &second].iter().map(|v| &v["data"]).collect();
    assert!(data.contains(&&json!("for-the-room")), "{first} {second}");
    assert!(
        [&first, &second].iter().any(|v| v["event"] == "joined"),
        "{first} {second}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signature_used_on_one_node_is_refused_by_another() -> Result<()> {
    use crate::plugins::{listeners, plugin_tenant, signed, unix_now};
    let redis = RedisServer::start().await?;
    let config = format!(
        "{}{}",
        plugin_tenant(
            "t",
            "bundled:md5-sign",
            "settings = { key = \"k\", window_secs = 60 }"
        ),
        listeners("t")
    );
    let n = nodes_with(&redis, 2, &config).await?;
    let path = signed("ann", "k", unix_now());
    let mut c = ws(n[0].addr("ws"), &path).await?;
    c.send(json!({"event": "join", "room": "r"})).await?;
    assert_eq!(c.recv().await?["event"], "joined");
    let resp = relay_tests::raw_upgrade(n[1].addr("ws"), &path, "").await?;
    assert!(
        resp.starts_with("HTTP/1.1 401") && resp.ends_with("sign already used"),
        "{resp}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_001_a_token_registered_through_one_node_logs_in_on_another() -> Result<()> {
    use crate::seed_swoole_push::{access_token, register, seed_config};
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 2, &seed_config()?).await?;
    register(&n[0], "42", "app", "t-42").await?;
    let path = format!(
        "/?access_token={}&token=dev-42",
        access_token("42", "t-42", "app")
    );
    let mut c = ws(n[1].addr("ws"), &path).await?;
    assert_eq!(c.recv().await?["code"], 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_003_a_message_published_on_redis_reaches_clients_on_every_node_once() -> Result<()> {
    use crate::seed_socket_im::{md5_hex, seed_config, KEY};
    let redis = RedisServer::start().await?;
    let config = seed_config()?.replace(
        "profile = \"socket.io\"",
        "profile = \"socket.io\"\nredis_ingress = [{ channel = \"xin_common_chat\", path = \"/api/notify\" }]",
    );
    let n = nodes_with(&redis, 2, &config).await?;
    let mut d = relay_tests::sio::SioDriver::start().await?;
    let sign = md5_hex(&format!("demoroom1{KEY}"));
    for (name, node) in [("a", &n[0]), ("b", &n[1])] {
        let url = format!(
            "http://{}/?userid=1&username=u&source=demo&room_ids=room1&sign={sign}",
            node.addr("im")
        );
        d.connect(name, 2, &url, json!({})).await?;
        d.wait_transport(name, "websocket").await?;
    }
    let held = || {
        n.iter()
            .map(|r| r.metric("cluster_ingress_held"))
            .sum::<i64>()
    };
    n[0].eventually("one node holds the channel", |_| held() == 1)
        .await?;
    // A backend publishes, signed as for /api/notify.
    let body = json!({
        "source": "demo", "room_id": "room1", "data": "from-redis",
        "sign": md5_hex(&format!("demoroom1from-redis{KEY}")),
    });
    assert_eq!(
        redis
            .cmd(&["PUBLISH", "xin_common_chat", &body.to_string()])
            .await?,
        ":1",
        "exactly one node subscribed"
    );
    for name in ["a", "b"] {
        let m = d.next(name, "event", Some("newMsg")).await?;
        assert_eq!(m["args"][0]["data"], "from-redis", "{m}");
    }
    let again = d
        .sees_within(Duration::from_millis(300), |v| v["event"] == "newMsg")
        .await?;
    assert!(!again, "each client got the message once");
    // A forged message is refused by the tenant's plugin: nobody gets it.
    let forged = json!({"source": "demo", "room_id": "room1", "data": "forged", "sign": "0"});
    redis
        .cmd(&["PUBLISH", "xin_common_chat", &forged.to_string()])
        .await?;
    let seen = d
        .sees_within(Duration::from_millis(500), |v| v["event"] == "newMsg")
        .await?;
    assert!(!seen, "a forged message was delivered");
    d.exit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_002_a_socket_on_another_node_is_reached_and_an_unknown_one_is_a_500() -> Result<()> {
    use crate::seed_egg_envelope::{connect, envelope, seed_config, APP, SIGN, TS};
    let redis = RedisServer::start().await?;
    let n = nodes_with(&redis, 2, &seed_config()?).await?;
    let mut d = relay_tests::sio::SioDriver::start().await?;
    let a = connect(&mut d, "a", &format!("http://{}", n[0].addr("egg"))).await?;
    let b = connect(&mut d, "b", &format!("http://{}", n[1].addr("egg"))).await?;
    // A client on node 0 sends to a socket on node 1.
    let to_b = envelope(
        "sendToOthers",
        &b["userId"],
        &b["socketId"],
        json!({"hello": 1}),
    );
    d.emit("a", "requestMessage", to_b, false).await?;
    let m = d.next("b", "event", Some("responseMessage")).await?;
    assert_eq!(m["args"][0]["data"]["payload"], json!({"hello": 1}), "{m}");
    // The backend, through node 0, to the socket on node 1.
    let body = json!({"timestamp": TS, "app": APP, "target": b["socketId"], "userId": b["userId"], "sign": SIGN, "message": {"text": "hi"}});
    let (s, r) = relay_tests::http(
        n[0].addr("egg"),
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        body.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(s, 200, "{r}");
    let m = d.next("b", "event", Some("responseMessage")).await?;
    assert_eq!(m["args"][0]["data"]["payload"], "{\"text\":\"hi\"}", "{m}");
    let mut unknown = body.clone();
    unknown["target"] = json!("nobody");
    let (s, _) = relay_tests::http(
        n[1].addr("egg"),
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        unknown.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(s, 500);
    let _ = a;
    d.exit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_001_tokens_are_read_from_the_originals_redis_hash() -> Result<()> {
    use crate::seed_swoole_push::{access_token, seed_config};
    let redis = RedisServer::start().await?;
    let config = seed_config()?.replace(
        "settings = { api_key",
        "redis_read = [\"login*\"]\nsettings = { login_source = \"redis\", api_key",
    );
    let n = nodes_with(&redis, 2, &config).await?;
    // The original's backend writes the hash, as it always did.
    let entry = json!({"uid": "7", "token": "t-7", "expires": 0}).to_string();
    assert_eq!(redis.cmd(&["HSET", "login7", "app", &entry]).await?, ":1");
    for node in &n {
        let path = format!(
            "/?access_token={}&token=dev-7-{}",
            access_token("7", "t-7", "app"),
            node.addr("ws").port()
        );
        let mut c = ws(node.addr("ws"), &path).await?;
        assert_eq!(c.recv().await?["code"], 200);
    }
    let bad = format!("/?access_token={}", access_token("7", "wrong", "app"));
    let mut c = ws(n[0].addr("ws"), &bad).await?;
    assert_eq!(c.recv().await?["code"], 401);
    Ok(())
}
