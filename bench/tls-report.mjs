#!/usr/bin/env node
// The TLS section of RESULTS.md (issue 15) from run.mjs results files of the
// TLS targets (lib/tls-targets.mjs) and their plain baselines, one table per
// file (e.g. one run with the ECDSA certificate, one with TLS_KEY=rsa):
//
//   node tls-report.mjs results/<date>-tls.json [results/<date>-tls-rsa.json]
//   node tls-report.mjs            # the newest results/*-tls*.json of each key type
//
// Per target and scenario: req/s, handshakes/s (wrk's, counted by
// lib/wrk-tls-shim.c) and the share resumed, CPU-µs per request of the
// target's process tree (with a handshake per request: per handshake),
// × the target's reference in the same run (nginx-tls for the TLS
// targets, nginx-upstream-tls for turnpike-upstream-tls, nginx for the
// plain ones), how busy the load CPU was, RSS. Then what TLS adds over each
// target's plain counterpart in the same run (TLS_BASELINES): keep-alive
// (tls-get-64 - get-64), a resumed and a full handshake (tls-handshake /
// tls-handshake-full - close-64: a new TCP connection per request either
// way, so the difference is the TLS part), and https upstreams (get-64).
//
// NO_MD=1 prints without touching RESULTS.md.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { RESULTS_DIR, mdTable, fmt, fmtRate, relPath, updateResultsMd } from './lib/report.mjs';
import { TLS_BASELINES } from './lib/tls-targets.mjs';

const SCENARIO_ORDER = ['tls-get-64', 'tls-handshake', 'tls-handshake-full', 'tls12-handshake', 'tls12-handshake-full', 'get-64', 'close-64'];

function newestFiles() {
  const files = readdirSync(RESULTS_DIR)
    .filter((f) => /-tls(-rsa)?(-\d+)?\.json$/.test(f))
    .map((f) => join(RESULTS_DIR, f))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  const out = [];
  for (const rsa of [false, true]) {
    const f = files.find((x) => /-tls-rsa(-\d+)?\.json$/.test(x) === rsa);
    if (f) out.push(f);
  }
  return out;
}

const files = process.argv.slice(2).length ? process.argv.slice(2) : newestFiles();
if (files.length === 0) {
  console.error('usage: node tls-report.mjs <results.json> [more.json]  (no results/*-tls*.json found)');
  process.exit(2);
}

const keyType = (r) => (r.knobs?.TLS_KEY === 'rsa' || r.targets.some((t) => /RSA 2048/.test(t.version ?? '')) ? 'RSA 2048' : 'ECDSA P-256');

/** One results file: its table, the TLS-over-plain differences, the facts line. */
function section(file) {
  const r = JSON.parse(readFileSync(file, 'utf8'));
  const m = r.medians;
  const rows = [];
  const order = [...SCENARIO_ORDER.filter((s) => m[s]), ...Object.keys(m).filter((s) => !SCENARIO_ORDER.includes(s))];
  const negotiated = new Map();
  for (const s of order) {
    for (const [target, x] of Object.entries(m[s])) {
      if (target === 'direct') continue;
      if (x.tls) {
        const v = `${x.tls.version} ${x.tls.cipher} ${x.tls.group}`;
        if (!negotiated.has(v)) negotiated.set(v, new Set());
        negotiated.get(v).add(target);
      }
      const hs = x.handshakesPerS !== undefined && s !== 'tls-get-64' ? fmtRate(x.handshakesPerS) : '';
      rows.push([
        target, s, fmtRate(x.rps), hs, x.resumedPct !== undefined && s !== 'tls-get-64' ? fmt(x.resumedPct, 1) : '',
        fmt(x.cpuUsPerReq), Number.isFinite(x.cpuUsPerReqMin) ? `${fmt(x.cpuUsPerReqMin)}-${fmt(x.cpuUsPerReqMax)}` : '',
        x.xNginx === null || x.xNginx === undefined ? '' : `${fmt(x.xNginx, 2)} (${x.reference ?? 'nginx'})`,
        fmt(x.cpuBusyPct, 0), fmt(x.loadCpuBusyPct, 0), fmt(x.rssMb), x.errors,
      ]);
    }
  }
  const table = mdTable(['target', 'scenario', 'req/s', 'handshakes/s', 'resumed %', 'CPU-µs/req', 'rounds min-max', '× reference', 'target CPU %', 'load CPU %', 'RSS MB', 'errors'], rows);

  // What TLS adds over the plain counterpart, same run (CPU-µs per request).
  const diff = (tlsScenario, tlsTarget, plainScenario, plainTarget) => {
    const a = m[tlsScenario]?.[tlsTarget]?.cpuUsPerReq;
    const b = m[plainScenario]?.[plainTarget]?.cpuUsPerReq;
    return typeof a === 'number' && typeof b === 'number' ? a - b : null;
  };
  const addRows = [];
  for (const [tlsTarget, plain] of Object.entries(TLS_BASELINES)) {
    const up = tlsTarget.includes('upstream');
    const cells = up
      ? [diff('get-64', tlsTarget, 'get-64', plain), null, null, null, null]
      : [diff('tls-get-64', tlsTarget, 'get-64', plain), ...['tls-handshake', 'tls-handshake-full', 'tls12-handshake', 'tls12-handshake-full'].map((h) => diff(h, tlsTarget, 'close-64', plain))];
    if (cells.every((c) => c === null)) continue;
    addRows.push([`${tlsTarget} over ${plain}`, ...cells.map((c) => fmt(c))]);
  }
  const addTable = addRows.length
    ? mdTable(['target over its plain counterpart', 'keep-alive (get-64)', 'resumed handshake', 'full handshake', 'TLS 1.2 resumed', 'TLS 1.2 full'], addRows)
    : '';

  const notRun = r.targets.filter((t) => t.status !== 'ok');
  const fails = (r.failures ?? []).length;
  const k = r.knobs;
  const la = r.machine.loadavgAtStart?.join(' ') ?? '?';
  return `### ${keyType(r)} certificate (\`${relPath(file)}\`)

Run ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC; ${r.machine.nproc} CPUs (${r.machine.cpuModel}), node ${r.machine.node}${r.machine.bun ? `, bun ${r.machine.bun}` : ''}, nginx ${(r.machine.nginx ?? '-').replace(/^nginx\//, '')}, wrk ${(r.machine.wrk ?? '?').split(' [')[0].replace(/^wrk /, '')}.
ROUNDS=${k.ROUNDS}, DURATION=${k.DURATION}s, WARMUP=${k.WARMUP}s${k.PARALLEL ? ', PARALLEL' : ''}; load average at the start ${la}, machine ${r.machine.busyPctBeforeStart ?? '?'}% busy over 1 s before it. Medians across rounds, errors summed.${notRun.length ? `\nNot run: ${notRun.map((t) => `${t.name} (${t.status}: ${(t.reason ?? '').slice(0, 140)})`).join('; ')}.` : ''}${fails ? ` ${fails} run(s) failed (see "failures" in the file).` : ''}
Negotiated (as wrk saw it, first handshake of a run): ${[...negotiated].map(([v, ts]) => `${v} (${[...ts].join(', ')})`).join('; ') || '-'}.

${table}
${addTable ? `\nWhat TLS adds, CPU-µs per request (the TLS target minus its plain counterpart in the same run; keep-alive: tls-get-64 - get-64; handshakes: tls(12)-handshake(-full) - close-64, both a new TCP connection per request; upstream: get-64 through an https upstream - get-64 through the plain one):\n\n${addTable}\n` : ''}`;
}

const body = `## TLS: termination and https upstreams (issue 15)

Written by \`tls-report.mjs\` from \`run.mjs\` runs of the TLS targets (\`lib/tls-targets.mjs\`) beside their plain baselines:
\`NAME=tls NO_MD=1 TARGETS=nginx,turnpike-node,turnpike-node-backend,turnpike-bun,nginx-tls,turnpike-tls,turnpike-tls-node-backend,turnpike-bun-tls,turnpike-upstream-tls,nginx-upstream-tls SCENARIOS=get-64,close-64,tls-get-64,tls-handshake,tls-handshake-full,tls12-handshake,tls12-handshake-full node run.mjs\`
(and \`TLS_KEY=rsa NAME=tls-rsa\` with the handshake scenarios for RSA 2048 leaves; commands in README.md).

Method. As run.mjs (target on CPU 0, wrk -t1 and the upstream on CPU 1; CPU-µs/req = utime+stime of the target's process tree / requests). One certificate per run, made with openssl: a private CA and an ECDSA P-256 (or RSA 2048) leaf, served by every TLS target. nginx-tls: one worker, \`listen ssl\`, TLSv1.2 + TLSv1.3, Turnpike's default TLS 1.2 ciphers and curves, resumption as nginx ships it (no \`ssl_session_cache\`, \`ssl_session_tickets on\`: stateless tickets). turnpike-tls: turnpike-node's config + \`server.tls\` (uWS, whose TLS is a statically linked BoringSSL); turnpike-tls-node-backend and turnpike-bun-tls: the same on \`server.backend: node\` (Node's OpenSSL) and on Bun. tls-get-64: keep-alive, 64 connections, so 64 handshakes per run. tls-handshake: \`Connection: close\`, a new connection and handshake per request; wrk keeps each connection slot's last session and offers it again (SSL_clear keeps a cleanly shut-down session), so a server that takes tickets resumes nearly every handshake: **resumed %** counts them (\`lib/wrk-tls-shim.c\`, preloaded into wrk). tls-handshake-full: the same with the shim dropping the session, so every handshake is full. tls12-handshake(-full): the same two with wrk capped at TLS 1.2 (a resumed TLS 1.2 handshake does no key exchange; a resumed TLS 1.3 one does, psk_dhe_ke). close-64: \`Connection: close\` over plain TCP, the baseline of both. With a handshake per request, handshakes/s = req/s and CPU-µs/req is per handshake (accept, handshake, the proxied request, close). Upstream TLS: turnpike-upstream-tls (turnpike-node, target \`https://127.0.0.1:18046\`, \`tls: { ca, servername }\`, verified) and nginx-upstream-tls (\`proxy_pass https://\`, \`proxy_ssl_verify on\`, \`proxy_ssl_session_reuse on\`, upstream \`keepalive 512\`), both in front of a one-worker nginx \`listen ssl\` upstream on CPU 1; get-64, so upstream handshakes are amortised over the pool too.

Caveats. A full TLS 1.3 handshake costs wrk (verifying the server's signature, its own key exchange) about as much as the server, and wrk shares CPU 1 with the upstream: in the handshake scenarios **load CPU %** near 100 means req/s is wrk's limit, not the target's, and the targets then run below saturation (**target CPU %**), where an event loop does less per wake-up; CPU-µs per handshake still compares within a run. A 2-core shared VM: compare within a run (× reference), ROUNDS >= 3; a ROUNDS=1 run is indicative only.

${files.map(section).join('\n\n')}`;

console.log(body);
if (!process.env.NO_MD) console.log(`\nwrote ${relPath(updateResultsMd('tls', body))} (tls section)`);
