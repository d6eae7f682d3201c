'use strict';
// Shared helpers for the bench peers: CLI parsing, JSON body reading,
// push-body validation and JSON responses. Both peers answer the push API
// identically so the load tool can treat them (and relay) the same way.

const MAX_BODY = 64 * 1024;

function parsePort(argv) {
  let port = 0;
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port' || a === '-p') {
      port = argv[++i];
    } else if (a.startsWith('--port=')) {
      port = a.slice('--port='.length);
    } else {
      fail(`unknown argument: ${a}\nusage: node ${require('node:path').basename(argv[1])} --port P`);
    }
  }
  const n = Number(port);
  if (!Number.isInteger(n) || n < 0 || n > 65535) fail(`invalid --port: ${port}`);
  return n;
}

function fail(msg) {
  process.stderr.write(msg + '\n');
  process.exit(2);
}

// "a,b" or ["a","b"] -> ["a","b"]; trims, drops empties, dedups.
function splitRooms(v) {
  if (v === undefined || v === null) return [];
  const parts = Array.isArray(v) ? v : [v];
  const out = new Set();
  for (const p of parts) {
    if (typeof p !== 'string' && typeof p !== 'number') continue;
    for (const s of String(p).split(',')) {
      const r = s.trim();
      if (r) out.add(r);
    }
  }
  return [...out];
}

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

// Reads the request body (max 64 KiB) and calls cb(err, parsedPush).
// err is {status, error} ready to be sent; parsedPush is {rooms, data}.
function readPush(req, cb) {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_BODY) {
    req.resume();
    return cb({ status: 413, error: 'body too large' });
  }
  const chunks = [];
  let size = 0;
  let done = false;
  req.on('data', (c) => {
    if (done) return;
    size += c.length;
    if (size > MAX_BODY) {
      done = true;
      req.resume();
      return cb({ status: 413, error: 'body too large' });
    }
    chunks.push(c);
  });
  req.on('error', () => {
    if (done) return;
    done = true;
    cb({ status: 400, error: 'request error' });
  });
  req.on('end', () => {
    if (done) return;
    done = true;
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return cb({ status: 400, error: 'invalid JSON' });
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      return cb({ status: 400, error: 'body must be a JSON object' });
    }
    const rooms = splitRooms(body.room).concat(splitRooms(body.rooms));
    const uniq = [...new Set(rooms)];
    if (uniq.length === 0) return cb({ status: 400, error: 'missing room' });
    if (!Object.prototype.hasOwnProperty.call(body, 'data')) {
      return cb({ status: 400, error: 'missing data' });
    }
    cb(null, { rooms: uniq, data: body.data });
  });
}

function announce(server) {
  const { port } = server.address();
  // Exactly one line on stdout. Writes to pipes and files are synchronous
  // on Linux, so the line is flushed when write() returns.
  process.stdout.write(`LISTENING ${port}\n`);
}

function onSignals(close) {
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      close();
      setTimeout(() => process.exit(0), 200).unref();
    });
  }
}

module.exports = { MAX_BODY, parsePort, splitRooms, sendJson, readPush, announce, onSignals };
