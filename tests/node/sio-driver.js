// Drives real socket.io-client 2.x and 4.x connections for relay's end-to-end tests.
//
// Commands arrive on stdin, one JSON object per line; everything the clients see is
// printed on stdout, one JSON object per line. Binary data travels as {"$binary": base64}.
//
//   {"op":"connect","name":"a","version":4,"url":"http://127.0.0.1:1234","opts":{...}}
//   {"op":"emit","name":"a","event":"echo","args":[...],"ack":true}
//   {"op":"answer","name":"a","args":["yes"]}   // answer server acks with these args
//   {"op":"close","name":"a"}
//
// Printed: {"name","type":"connect","id","transport"}, {"type":"upgrade","transport"},
// {"type":"event","event","args"}, {"type":"ack","event","args"},
// {"type":"disconnect","reason"}, {"type":"connect_error","message","data"},
// {"type":"error","error"}, {"type":"reconnect_attempt"}.

"use strict";
const readline = require("readline");
const clients = { 2: require("sio2"), 4: require("sio4") };
const sockets = new Map();
const answers = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Buffers/ArrayBuffers → {"$binary": base64}, recursively.
function toJson(v) {
  if (v === null || v === undefined) return v === undefined ? null : v;
  if (Buffer.isBuffer(v)) return { $binary: v.toString("base64") };
  if (v instanceof ArrayBuffer) return { $binary: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) return { $binary: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map(toJson);
  if (typeof v === "object") {
    const o = {};
    for (const k of Object.keys(v)) o[k] = toJson(v[k]);
    return o;
  }
  return v;
}

// {"$binary": base64} → Buffer, recursively.
function fromJson(v) {
  if (Array.isArray(v)) return v.map(fromJson);
  if (v && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$binary") return Buffer.from(v.$binary, "base64");
    const o = {};
    for (const k of keys) o[k] = fromJson(v[k]);
    return o;
  }
  return v;
}

function transportOf(socket) {
  const engine = socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function connect(cmd) {
  const { name, version, url } = cmd;
  const io = clients[version];
  if (!io) return out({ name, type: "error", error: "unknown version " + version });
  const opts = Object.assign({ forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 200 }, cmd.opts || {});
  const socket = io(url, opts);
  sockets.set(name, { socket, version });
  socket.on("connect", () => {
    out({ name, type: "connect", id: socket.id, transport: transportOf(socket) });
    const engine = socket.io.engine;
    if (engine && !engine.__relayWatched) {
      engine.__relayWatched = true;
      engine.on("upgrade", (t) => out({ name, type: "upgrade", transport: t && t.name ? t.name : String(t) }));
    }
  });
  socket.on("disconnect", (reason) => out({ name, type: "disconnect", reason }));
  socket.on("connect_error", (err) => {
    const message = err && err.message !== undefined ? err.message : err;
    out({ name, type: "connect_error", message: toJson(message), data: toJson(err && err.data) });
  });
  // socket.io-client 2.x reports namespace refusals as an "error" event.
  socket.on("error", (err) => out({ name, type: "error", error: toJson(err) }));
  socket.io.on("reconnect_attempt", () => out({ name, type: "reconnect_attempt" }));
  const onAny = (event, ...args) => {
    const cb = typeof args[args.length - 1] === "function" ? args.pop() : null;
    out({ name, type: "event", event, args: toJson(args), wantsAck: !!cb });
    if (cb) cb(...fromJson(answers.get(name) || []));
  };
  if (typeof socket.onAny === "function") {
    socket.onAny(onAny);
  } else {
    // socket.io-client 2.x has no onAny: wrap onevent.
    socket.onevent = function (packet) {
      const args = (packet.data || []).slice();
      if (packet.id != null) args.push(this.ack(packet.id));
      onAny(...args);
    };
  }
}

function handle(cmd) {
  const entry = sockets.get(cmd.name);
  switch (cmd.op) {
    case "connect":
      return connect(cmd);
    case "emit": {
      if (!entry) return out({ name: cmd.name, type: "error", error: "no such client" });
      const args = fromJson(cmd.args || []);
      if (cmd.ack) {
        entry.socket.emit(cmd.event, ...args, (...ackArgs) =>
          out({ name: cmd.name, type: "ack", event: cmd.event, args: toJson(ackArgs) }));
      } else {
        entry.socket.emit(cmd.event, ...args);
      }
      return;
    }
    case "status":
      if (!entry) return out({ name: cmd.name, type: "status", exists: false });
      return out({ name: cmd.name, type: "status", exists: true, connected: entry.socket.connected, id: entry.socket.id || null, transport: transportOf(entry.socket) });
    case "answer":
      answers.set(cmd.name, cmd.args || []);
      return;
    case "close":
      if (entry) entry.socket.close();
      return;
    case "exit":
      for (const { socket } of sockets.values()) socket.close();
      setTimeout(() => process.exit(0), 50);
      return;
    default:
      out({ type: "error", error: "unknown op " + cmd.op });
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  try {
    handle(JSON.parse(line));
  } catch (e) {
    out({ type: "error", error: String(e) });
  }
});
rl.on("close", () => process.exit(0));
out({ type: "ready" });
