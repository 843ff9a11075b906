#!/usr/bin/env node
// Talk to zeusd from Node.js with only its standard library (net).
// Usage: node examples/node_client.js [SOCKET_PATH]
//   default: $ZEUSD_SOCK_PATH, else $ZEUSD_HOST_PORT (TCP), else /tmp/zeusd.sock
'use strict';

const net = require('net');

class Zeusd {
  constructor(options) {
    this.socket = net.createConnection(options);
    this.socket.setEncoding('utf8');
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, method}
    this.buffer = '';
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('error', (err) => this.failAll(err));
    this.socket.on('close', () => this.failAll(new Error('zeusd closed the connection')));
  }

  // Replies arrive in completion order, one JSON text per line: match them by id.
  onData(chunk) {
    this.buffer += chunk;
    let newline;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      const reply = JSON.parse(line);
      const waiter = this.pending.get(reply.id);
      if (!waiter) continue; // e.g. a subscription's notification
      this.pending.delete(reply.id);
      if ('error' in reply) {
        const { code, message, data } = reply.error;
        const err = new Error(`${waiter.method}: ${message} (${code})`);
        Object.assign(err, { code, data });
        waiter.reject(err);
      } else {
        waiter.resolve(reply.result);
      }
    }
  }

  failAll(err) {
    for (const waiter of this.pending.values()) waiter.reject(err);
    this.pending.clear();
  }

  call(method, params = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.socket.write(JSON.stringify({ jsonrpc: '2.0', method, params, id }) + '\n');
    });
  }

  // Fire and forget: no id, never answered.
  notify(method, params = {}) {
    this.socket.write(JSON.stringify({ jsonrpc: '2.0', method, params }) + '\n');
  }

  close() {
    this.socket.end();
  }
}

function address() {
  const path = process.argv[2] || process.env.ZEUSD_SOCK_PATH;
  if (path) return { path };
  const hostPort = process.env.ZEUSD_HOST_PORT;
  if (hostPort) {
    const at = hostPort.lastIndexOf(':');
    return { host: hostPort.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(hostPort.slice(at + 1)) };
  }
  return { path: '/tmp/zeusd.sock' };
}

async function main() {
  const zeusd = new Zeusd(address());
  try {
    const { gpus } = await zeusd.call('discover');
    console.log(`${gpus.length} GPUs: ${gpus.map((g) => g.name).join(', ')}`);
    // Requests for different GPUs run concurrently: send both, then wait for both.
    const [power, limits] = await Promise.all([
      zeusd.call('gpu.get_power'),
      zeusd.call('gpu.get_power_limit'),
    ]);
    console.log('power (mW):', JSON.stringify(power.power_mw));
    console.log('limits:', JSON.stringify(limits));
    await zeusd.call('gpu.set_power_limit', { gpu_ids: [0], power_limit_mw: 260000 });
    console.log('GPU 0 after:', JSON.stringify(await zeusd.call('gpu.get_power_limit', { gpu_ids: [0] })));
    try {
      await zeusd.call('gpu.set_power_limit', { gpu_ids: [0], power_limit_mw: 5 });
    } catch (err) {
      console.log(`refused as expected: ${err.message}: ${err.data.reason}`);
    }
    // A notification followed by a read of the same GPU on this connection sees the write.
    zeusd.notify('gpu.reset_power_limit', { gpu_ids: [0] });
    console.log('GPU 0 reset:', JSON.stringify(await zeusd.call('gpu.get_power_limit', { gpu_ids: [0] })));
  } finally {
    zeusd.close();
  }
}

main().catch((err) => {
  console.error(err.message);
  process.exit(1);
});
