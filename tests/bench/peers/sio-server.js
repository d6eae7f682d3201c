#!/usr/bin/env node
'use strict';
// Bench peer: socket.io 4 broadcast server (default in-memory adapter; the Redis
// adapter when REDIS_URL is set).
//
//   node sio-server.js --port P      (P=0: ephemeral; prints "LISTENING <port>")
//
//   WS   /socket.io/?EIO=4&transport=websocket&rooms=a,b   join rooms a and b
//   POST /push {"room":"r","data":…} io.to(rooms).emit("message", data)
//        -> clients receive 42["message",…]
//        ("rooms": "a,b" or ["a","b"] also accepted)
//        -> 200 {"ok":true,"online":N} | 400 {"ok":false,"error":…} | 413
//   GET  /stats                      -> {"connections": io.engine.clientsCount}

const http = require('node:http');
const { Server } = require('socket.io');
const { parsePort, splitRooms, sendJson, readPush, announce, onSignals } = require('./common');

const port = parsePort(process.argv);

let io; // set below; the request listener only runs after listen()

// Registered before socket.io attaches: engine.io keeps this listener and
// calls it for every request outside its /socket.io/ path, so /push and
// /stats are never swallowed.
const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (path === '/push') {
    if (req.method !== 'POST') return sendJson(res, 405, { ok: false, error: 'method not allowed' });
    return readPush(req, (err, push) => {
      if (err) return sendJson(res, err.status, { ok: false, error: err.error });
      // Recipients = union of the rooms' members (what io.to(rooms) reaches).
      const adapterRooms = io.of('/').adapter.rooms;
      const targets = new Set();
      for (const r of push.rooms) {
        const set = adapterRooms.get(r);
        if (set) for (const sid of set) targets.add(sid);
      }
      io.to(push.rooms).emit('message', push.data);
      sendJson(res, 200, { ok: true, online: targets.size });
    });
  }
  if (path === '/stats' && req.method === 'GET') {
    return sendJson(res, 200, { connections: io.engine.clientsCount });
  }
  sendJson(res, 404, { ok: false, error: 'not found' });
});

io = new Server(server, {
  transports: ['websocket', 'polling'],
  pingInterval: 25000,
  pingTimeout: 60000,
  maxHttpBufferSize: 1e6,
  perMessageDeflate: false,
  serveClient: false,
  cors: { origin: '*' },
});

io.on('connection', (socket) => {
  const joined = splitRooms(socket.handshake.query.rooms);
  if (joined.length) socket.join(joined);
  // Client events are ignored; socket.io removes the socket from its rooms
  // on disconnect.
});

// With REDIS_URL set, several processes form one cluster through the official Redis
// adapter (@socket.io/redis-adapter): every broadcast is published to Redis and every
// process receives it (the adapter's design), each delivering to its own sockets.
async function start() {
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  server.listen(port, () => announce(server));
}
start().catch((e) => {
  process.stderr.write(`cannot start: ${e}\n`);
  process.exit(1);
});
onSignals(() => {
  io.close();
  server.close();
});
