#!/usr/bin/env node
'use strict';
// Bench peer: plain `ws` broadcast server.
//
//   node ws-server.js --port P      (P=0: ephemeral; prints "LISTENING <port>")
//
//   WS   /?rooms=a,b                 join rooms a and b (param optional)
//   POST /push {"room":"r","data":…} send {"event":"message","data":…} to the room(s)
//        ("rooms": "a,b" or ["a","b"] also accepted)
//        -> 200 {"ok":true,"online":N} | 400 {"ok":false,"error":…} | 413
//   GET  /stats                      -> {"connections":N}

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');
const { parsePort, splitRooms, sendJson, readPush, announce, onSignals } = require('./common');

const port = parsePort(process.argv);

/** @type {Map<string, Set<WebSocket>>} */
const rooms = new Map();
let connections = 0;

function join(ws, room) {
  let set = rooms.get(room);
  if (!set) rooms.set(room, (set = new Set()));
  set.add(ws);
}

function leave(ws, room) {
  const set = rooms.get(room);
  if (!set) return;
  set.delete(ws);
  if (set.size === 0) rooms.delete(room);
}

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 1024 * 1024,
});

wss.on('connection', (ws, req) => {
  connections++;
  const url = new URL(req.url, 'http://localhost');
  const joined = splitRooms(url.searchParams.get('rooms'));
  for (const r of joined) join(ws, r);
  ws.on('message', () => {}); // client messages are ignored
  ws.on('error', () => {});
  ws.on('close', () => {
    connections--;
    for (const r of joined) leave(ws, r);
  });
});

const server = http.createServer((req, res) => {
  const path = req.url.split('?', 1)[0];
  if (path === '/push') {
    if (req.method !== 'POST') return sendJson(res, 405, { ok: false, error: 'method not allowed' });
    return readPush(req, (err, push) => {
      if (err) return sendJson(res, err.status, { ok: false, error: err.error });
      // Encode once, send the same string to every recipient.
      const frame = JSON.stringify({ event: 'message', data: push.data });
      const targets = new Set();
      for (const r of push.rooms) {
        const set = rooms.get(r);
        if (set) for (const ws of set) targets.add(ws);
      }
      let online = 0;
      for (const ws of targets) {
        if (ws.readyState === WebSocket.OPEN) {
          ws.send(frame);
          online++;
        }
      }
      sendJson(res, 200, { ok: true, online });
    });
  }
  if (path === '/stats' && req.method === 'GET') {
    return sendJson(res, 200, { connections });
  }
  sendJson(res, 404, { ok: false, error: 'not found' });
});

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

server.listen(port, () => announce(server));
onSignals(() => server.close());
