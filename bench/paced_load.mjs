// Open-loop paced load: sends requests at a steady rate, spread evenly in time (not in bursts), over a pool of
// keep-alive connections, and reports latency percentiles of the requests that completed.
//   node bench/paced_load.mjs URL RATE SECONDS BODY_FILE HEADERS_JSON
// hey's -q paces each worker on its own ticker, so its 32 workers fire together: bursts of 32 requests, which
// measure burst queueing rather than latency at a rate. This sends one request every 1/RATE seconds.
import http from "node:http";
import fs from "node:fs";

const [url, rate, seconds, bodyFile, headersJson] = process.argv.slice(2);
const body = fs.readFileSync(bodyFile);
const headers = { ...JSON.parse(headersJson), "Content-Length": body.length };
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const target = new URL(url);
const total = Math.round(Number(rate) * Number(seconds));
const latencies = [];
let sent = 0, done = 0, errors = 0;
const errorKinds = {}; // "HTTP 503" or "ECONNRESET": how many
function failed(kind) { errors++; errorKinds[kind] = (errorKinds[kind] || 0) + 1; }
const start = process.hrtime.bigint();

function fire() {
  const began = process.hrtime.bigint();
  const request = http.request(
    { host: target.hostname, port: target.port, path: target.pathname + target.search, method: "PUT", headers, agent },
    (response) => {
      response.resume();
      response.on("end", () => {
        latencies.push(Number(process.hrtime.bigint() - began) / 1e6);
        if (response.statusCode !== 200) failed(`HTTP ${response.statusCode}`);
        finish();
      });
    },
  );
  request.on("error", (error) => { failed(error.code || error.message); finish(); });
  request.end(body);
}

function finish() {
  done++;
  if (done === total) {
    const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    latencies.sort((a, b) => a - b);
    const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
    console.log(JSON.stringify({ rps: done / elapsed, p50_ms: at(0.5), p99_ms: at(0.99), errors, error_kinds: errorKinds }));
    agent.destroy();
  }
}

function tick() {
  const due = Math.min(total, Math.floor((Number(process.hrtime.bigint() - start) / 1e9) * Number(rate)) + 1);
  while (sent < due) { sent++; fire(); }
  if (sent < total) setTimeout(tick, 1); // 1 ms granularity: at 2,000/s two requests per tick
}
tick();
