// The soak's load (tests/bench/soak.py starts it): for `--secs` seconds, against one
// relay, at once:
// - churn: WebSocket (ws and wss) and Socket.IO long-polling clients connect, join a
//   room, get a push, and leave, a few every 100 ms;
// - steady members: a fixed set of ws clients stay in rooms and count what arrives;
// - slow consumers: clients that join the room `slow` and never read; it gets 32 KB
//   pushes ten times a second, so the kernel's socket buffers (tens of MB on loopback)
//   fill within minutes, then relay's queue, and relay closes them 1013; they are
//   replaced;
// - pushes: HTTP pushes to the rooms, `--push-rate` a second.
// Prints one JSON line of totals at the end.
//
// Uses the `ws` and socket.io-client 4 packages of tests/node (npm ci there first).

const path = require("path");
const http = require("http");
const nodeModules = path.join(__dirname, "..", "node", "node_modules");
const WebSocket = require(path.join(nodeModules, "ws"));
const io = require(path.join(nodeModules, "sio4"));

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, [])
);
const secs = Number(args.secs || 60);
const ws = args.ws; // host:port
const wss = args.wss;
const sio = args.sio;
const push = args.push;
const pushRate = Number(args["push-rate"] || 200);
const rooms = 20;
const t = { opened: 0, failed: 0, received: 0, pushes: 0, push_errors: 0, slow: 0, sio: 0 };
const deadline = Date.now() + secs * 1000;
const live = () => Date.now() < deadline;

function churnWs(url, opts) {
  const c = new WebSocket(url, opts);
  const room = `r${Math.floor(Math.random() * rooms)}`;
  c.on("open", () => {
    t.opened++;
    c.send(JSON.stringify({ event: "join", room }));
    setTimeout(() => c.close(1000), 200 + Math.random() * 800);
  });
  c.on("message", () => t.received++);
  c.on("error", () => t.failed++);
}

function churnSio() {
  const s = io(`http://${sio}`, { transports: ["polling"], reconnection: false, forceNew: true,
    query: { rooms: `r${Math.floor(Math.random() * rooms)}` } });
  s.on("connect", () => { t.sio++; setTimeout(() => s.close(), 300 + Math.random() * 700); });
  s.on("message", () => t.received++);
  s.on("connect_error", () => { t.failed++; s.close(); });
}

function slowConsumer() {
  const c = new WebSocket(`ws://${ws}/`);
  c.on("open", () => {
    t.slow++;
    c.send(JSON.stringify({ event: "join", room: "slow" }));
    c._socket.pause(); // never read: its queue fills and relay closes it
    // A paused socket does not see relay's close either: replace it after a while.
    setTimeout(() => { c.terminate(); if (live()) slowConsumer(); }, 150000);
  });
  c.on("error", () => {});
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
function pushOne(room, size) {
  const [host, port] = push.split(":");
  const data = "x".repeat(size);
  const req = http.request({ host, port, agent, method: "GET",
    path: `/push?room=${room}&data=${data}` }, (res) => {
    res.resume();
    if (res.statusCode === 200) t.pushes++; else t.push_errors++;
  });
  req.on("error", () => t.push_errors++);
  req.end();
}

const members = [];
for (let i = 0; i < 100; i++) {
  const c = new WebSocket(`ws://${ws}/`);
  c.on("open", () => c.send(JSON.stringify({ event: "join", room: `r${i % rooms}` })));
  c.on("message", () => t.received++);
  c.on("error", () => t.failed++);
  members.push(c);
}
for (let i = 0; i < 5; i++) slowConsumer();

const timers = [
  setInterval(() => {
    for (let i = 0; i < 3; i++) churnWs(`ws://${ws}/`);
    churnWs(`wss://${wss}/`, { rejectUnauthorized: false });
    churnSio();
  }, 100),
  setInterval(() => {
    for (let i = 0; i < pushRate / 10; i++) pushOne(`r${Math.floor(Math.random() * rooms)}`, 200);
    pushOne("slow", 32 * 1024);
  }, 100),
];

setTimeout(() => {
  timers.forEach(clearInterval);
  members.forEach((c) => c.close(1000));
  setTimeout(() => { console.log(JSON.stringify(t)); process.exit(0); }, 1500);
}, secs * 1000);
