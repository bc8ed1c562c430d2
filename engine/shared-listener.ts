/**
 * One listening TCP socket for the node:net backend's worker threads.
 *
 * Why: node:net has no `reusePort` before Node 22.12, so worker threads cannot
 * each bind the port as uWS and Bun do. Worker threads of one process can
 * instead all `listen({ fd })` on one socket (shared/ENVIRONMENT.md). But a
 * worker that exits closes the fd it listened on, and with one fd number
 * shared by every thread that would close the port for all of them. So each
 * worker gets its OWN descriptor of the one socket (a dup): its exit, crash or
 * drain closes only its copy, and the socket keeps listening as long as one
 * copy is open. Used where node:net has no `reusePort` (before Node 22.12),
 * and with one worker thread on any Node (a crashed lone worker would
 * otherwise take the port with it until its replacement listens: measured
 * on Node 22, connections refused for ~0.6 s). With several workers on
 * 22.12+, each binds the port with `reusePort`, as uWS and Bun do,
 * because the kernel then spreads connections evenly over the threads (with
 * one shared accept queue, measured: 8 keep-alive connections all went to 2
 * of 4 threads; 64 to all 4 but 421/815/703/1086 requests). What the shared
 * queue does better: connections waiting to be accepted while a crashed
 * worker is replaced are taken by the others (with SO_REUSEPORT the kernel
 * resets what waits in the dying thread's queue).
 *
 * How: the engine binds the socket (no listen, so the engine's own thread
 * never accepts) with node:net's `_createServerHandle`, the function Node's
 * cluster module uses for the same job. Node has no dup(2), but passing a
 * handle to another process over an IPC channel creates a new descriptor in
 * the receiver (SCM_RIGHTS); a short-lived child (fd-dup-child.ts) receives
 * the socket and sends it back once per copy wanted. Each copy arrives in
 * this process as a new handle, whose fd number goes to one worker thread.
 * The handles stay referenced here and are never closed by this thread: the
 * worker owns the descriptor from then on, and closing it here after the
 * worker closed it could close an unrelated file that reused the number.
 *
 * Costs: one child process (~80 ms) per batch of copies (the start's N, one
 * per crash replacement); no cost per connection or request.
 */
import { fork } from 'node:child_process';
import net from 'node:net';
import { getSystemErrorName } from 'node:util';
import { lookup } from 'node:dns/promises';

/** node:net's internal handle type (a libuv TCP handle wrap). */
interface TcpHandle {
  fd: number;
  close(cb?: () => void): void;
  getsockname(out: { address?: string; port?: number }): number;
}

type CreateServerHandle = (address: string, port: number, addressType: number, fd?: number, flags?: number) => TcpHandle | number;

const DUP_CHILD = new URL('./fd-dup-child.js', import.meta.url);
/** How long a batch of copies may take before the engine gives up (the child is killed). */
const DUP_TIMEOUT_MS = 10_000;

/** The socket the node backend's workers share (see the module comment). */
export class SharedListener {
  /** Handles of the copies given to workers: referenced forever, never closed here. */
  private readonly given: TcpHandle[] = [];
  private closed = false;

  private constructor(private readonly handle: TcpHandle, readonly port: number) {}

  /**
   * Binds `host:port` (a name is looked up first; port 0: a free port, read
   * back in `.port`) without listening. Rejects with an Error whose message
   * says what to do when the name does not resolve or the address is in use
   * or not available.
   */
  static async bind(host: string, port: number): Promise<SharedListener> {
    const create = (net as unknown as { _createServerHandle?: CreateServerHandle })._createServerHandle;
    if (typeof create !== 'function') {
      throw new Error(`server.backend: node needs node:net's _createServerHandle, which Node ${process.versions.node} does not have: use server.backend: uws or another Node version`);
    }
    // The handle binds an address, not a name: `localhost` is looked up first, as net.Server.listen does.
    let address = host;
    let family = net.isIPv6(host) ? 6 : 4;
    if (net.isIP(host) === 0) {
      try {
        ({ address, family } = await lookup(host));
      } catch (err) {
        throw new Error(`cannot listen on ${host}:${port}: the name does not resolve (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); set server.host to an address or a name this machine resolves`);
      }
    }
    const h = create(address, port, family);
    if (typeof h === 'number') {
      const code = errnoName(h);
      throw new Error(`cannot listen on ${host}:${port} (${code}): the address is in use or not available; pick another server.port/host`);
    }
    const out: { port?: number } = {};
    h.getsockname(out);
    return new SharedListener(h, out.port ?? port);
  }

  /**
   * `count` new descriptors of the socket, one per worker thread that will
   * `listen({ fd })` on it; the caller hands each to exactly one worker,
   * which owns it from then on. Rejects if the copying child fails or takes
   * longer than 10 s.
   */
  dup(count: number): Promise<number[]> {
    if (this.closed) return Promise.reject(new Error('the shared listener is closed (the gateway is stopping)'));
    if (count <= 0) return Promise.resolve([]);
    return new Promise((resolve, reject) => {
      // execArgv: [] — the engine's own flags (--inspect, --cpu-prof) are not for this child.
      const child = fork(DUP_CHILD, [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'json', execArgv: [] });
      const fds: number[] = [];
      let done = false;
      const finish = (err: Error | null): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (child.connected) child.disconnect();
        if (err !== null) {
          child.kill('SIGKILL');
          reject(err);
        } else {
          resolve(fds);
        }
      };
      const timer = setTimeout(() => finish(new Error(`copying the listening socket for ${count} worker(s) took over ${DUP_TIMEOUT_MS} ms`)), DUP_TIMEOUT_MS);
      child.on('message', (_m: unknown, h: unknown) => {
        if (h === undefined || h === null || typeof (h as TcpHandle).fd !== 'number' || (h as TcpHandle).fd < 0) {
          finish(new Error('copying the listening socket: the child sent no socket'));
          return;
        }
        this.given.push(h as TcpHandle);
        fds.push((h as TcpHandle).fd);
        if (fds.length === count) finish(null);
      });
      child.once('error', (err) => finish(new Error(`copying the listening socket: ${err.message}`)));
      child.once('exit', (code) => finish(fds.length === count ? null : new Error(`copying the listening socket: the child exited (code ${code}) after ${fds.length} of ${count} copies`)));
      child.send({ copies: count }, this.handle as unknown as net.Server, { keepOpen: true });
    });
  }

  /**
   * Closes the engine's own descriptor. The socket stops listening once the
   * workers' copies are closed too (their drain or exit).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handle.close();
  }
}

function errnoName(code: number): string {
  try {
    return getSystemErrorName(code);
  } catch {
    return `error ${code}`;
  }
}
