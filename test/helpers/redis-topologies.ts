/**
 * Private Redis Cluster and Sentinel setups for tests, from the same
 * `redis-server` binary as test/helpers/redis.ts (no redis-cli needed):
 *
 *  - startRedisCluster(n): n masters in cluster mode on free loopback
 *    ports, the 16,384 slots split between them (CLUSTER ADDSLOTSRANGE),
 *    joined with CLUSTER MEET; resolves once every node says
 *    cluster_state:ok.
 *  - startSentinel(): one master and one sentinel monitoring it (quorum 1).
 *
 * Processes are killed with the test process (trackProcess); `stop()`
 * ends them and removes their files.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { trackProcess } from './gateway.js';
import { freePort } from './ports.js';

function launch(args: string[], ready: string, cwd: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const p = trackProcess(spawn('redis-server', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`redis-server ${args.join(' ')} did not start within 5 s:\n${out}`));
    }, 5_000);
    p.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run redis-server (${err.message}); install it (apt-get install -y redis-server) or run .ci/run`));
    });
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes(ready)) {
        clearTimeout(timer);
        resolve(p);
      }
    };
    p.stdout!.on('data', onData);
    p.stderr!.on('data', onData);
  });
}

async function stopAll(procs: ChildProcess[], dir: string): Promise<void> {
  await Promise.all(procs.map((p) => new Promise<void>((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGKILL');
  })));
  rmSync(dir, { recursive: true, force: true });
}

export interface PrivateCluster {
  nodes: { host: string; port: number }[];
  stop(): Promise<void>;
}

export async function startRedisCluster(n = 3): Promise<PrivateCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-redis-cluster-'));
  const ports: number[] = [];
  for (let i = 0; i < n; i++) ports.push(await freePort());
  const procs = await Promise.all(ports.map((port) => launch([
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '2000',
  ], 'Ready to accept connections', dir)));
  const clients = ports.map((port) => new Redis(port, '127.0.0.1', { lazyConnect: true }));
  try {
    await Promise.all(clients.map((c) => c.connect()));
    const per = Math.ceil(16384 / n);
    await Promise.all(clients.map((c, i) => c.call('CLUSTER', 'ADDSLOTSRANGE', String(i * per), String(Math.min(16383, (i + 1) * per - 1)))));
    for (let i = 1; i < n; i++) await clients[0]!.call('CLUSTER', 'MEET', '127.0.0.1', String(ports[i]));
    const deadline = Date.now() + 15_000;
    for (const c of clients) {
      for (;;) {
        const info = String(await c.call('CLUSTER', 'INFO'));
        if (info.includes('cluster_state:ok') && info.includes(`cluster_known_nodes:${n}`)) break;
        if (Date.now() > deadline) throw new Error(`the cluster did not form:\n${info}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    await stopAll(procs, dir);
    throw err;
  } finally {
    for (const c of clients) c.disconnect();
  }
  return { nodes: ports.map((port) => ({ host: '127.0.0.1', port })), stop: () => stopAll(procs, dir) };
}

export interface PrivateSentinel {
  /** The master's port (for direct checks). */
  masterPort: number;
  sentinels: { host: string; port: number }[];
  name: string;
  stop(): Promise<void>;
}

export async function startSentinel(): Promise<PrivateSentinel> {
  const dir = mkdtempSync(join(tmpdir(), 'turnpike-redis-sentinel-'));
  const [masterPort, sentinelPort] = [await freePort(), await freePort()];
  const name = 'turnpike-test';
  const master = await launch(['--port', String(masterPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], 'Ready to accept connections', dir);
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(conf, [
    `port ${sentinelPort}`, 'bind 127.0.0.1', `dir ${dir}`,
    `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
    `sentinel down-after-milliseconds ${name} 2000`,
  ].join('\n') + '\n');
  let sentinel: ChildProcess;
  try {
    sentinel = await launch([conf, '--sentinel'], `+monitor master ${name}`, dir);
  } catch (err) {
    await stopAll([master], dir);
    throw err;
  }
  return {
    masterPort, name, sentinels: [{ host: '127.0.0.1', port: sentinelPort }],
    stop: () => stopAll([master, sentinel], dir),
  };
}
