// Peer: Fastify 5 + @fastify/http-proxy (undici underneath, via
// @fastify/reply-from), pool sized like the other peers.
// usage: node fastify-proxy.mjs <listenPort> <upstreamUrl> [connections]
import Fastify from 'fastify';
import proxy from '@fastify/http-proxy';

const [port, upstream, connections = '512'] = process.argv.slice(2);
const app = Fastify({ logger: false, keepAliveTimeout: 120_000, bodyLimit: 4 * 1024 * 1024 });
await app.register(proxy, {
  upstream,
  undici: { connections: Number(connections), pipelining: 1, keepAliveTimeout: 120_000 },
});
await app.listen({ port: Number(port), host: '127.0.0.1' });
process.on('SIGTERM', () => app.close().then(() => process.exit(0)));
