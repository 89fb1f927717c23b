'use strict';
// Unit tests of the Node.js SDK that need no VM: argument checks, error mapping, the
// JavaScript layer over the addon, the type declarations. `node --test sdk/typescript/test/`
// (scripts/test-typescript); the end-to-end scenario is tests/tests/sdk_nested.rs.

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

// Every test runs against its own empty msbvm home.
const home = fs.mkdtempSync(path.join(os.tmpdir(), 'msbvm-node-test-'));
process.env.MSBVM_HOME = home;

const msbvm = require('..');

test('every error kind has a class deriving from MsbvmError', () => {
  assert.ok(msbvm.errorKinds.length >= 28);
  for (const kind of msbvm.errorKinds) {
    const Class = msbvm[`${kind}Error`];
    assert.ok(Class, `${kind}Error is exported`);
    assert.ok(new Class('x') instanceof msbvm.MsbvmError);
    assert.ok(new Class('x') instanceof Error);
    assert.strictEqual(new Class('x').name, `${kind}Error`);
  }
});

test('a missing sandbox is NotFoundError naming it', async () => {
  await assert.rejects(msbvm.Sandbox.get('nobody-here'), (e) => {
    assert.ok(e instanceof msbvm.NotFoundError, e);
    assert.strictEqual(e.sandbox, 'nobody-here');
    assert.strictEqual(e.name, 'NotFoundError');
    assert.match(e.message, /msbvm ls/);
    return true;
  });
  await assert.rejects(msbvm.Sandbox.removeNamed('nobody-here'), msbvm.NotFoundError);
});

test('bad names are refused before anything starts', async () => {
  for (const name of ['', 'Has Space', '../up', 'a/b', 'x'.repeat(300), 'UPPER']) {
    await assert.rejects(msbvm.Sandbox.create(name), msbvm.InvalidNameError, name);
  }
  assert.deepStrictEqual(fs.readdirSync(home).filter((n) => n === 'sandboxes' && fs.readdirSync(path.join(home, n)).length), []);
});

test('bad options are InvalidConfigError and start nothing', async () => {
  const bad = [
    { cpus: 0 },
    { cpus: 255 },
    { cpus: 1.5 },
    { cpus: -1 },
    { memory: 1 },
    { memory: 1e15 },
    { readyTimeout: -1 },
    { readyTimeout: NaN },
    { readyTimeout: Infinity },
    { volumes: ['no-colon'] },
    { publish: ['nonsense'] },
    { secrets: [{ name: 'bad name', value: 'v', hosts: ['api.example.com'] }] },
    { secrets: [{ name: 'OK', value: 'v', hosts: ['bad host/'] }] },
    { tmpfs: ['relative/path'] },
    { tmpfs: ['/scratch:lots'] },
    { plugins: ['no-such-plugin'] },
    { tlsCa: 'mine' },
    { tlsIntercept: ['bad host/'] },
    { tlsUpstreamCa: ['/nonexistent/ca.pem'] },
    { tlsIntercept: ['api.example.com'], network: false },
    { mtu: 100 },
    { mtu: 70000 },
    { mtu: 1500.5 },
    { dnsServers: ['dns.example'] },
  ];
  for (const options of bad) {
    await assert.rejects(msbvm.Sandbox.create('fine', options), msbvm.InvalidConfigError, JSON.stringify(options));
  }
  assert.ok(!fs.existsSync(path.join(home, 'sandboxes', 'fine')));
});

test('wrong types are TypeErrors', async () => {
  await assert.rejects(msbvm.Sandbox.create('fine', { cpus: 'two' }));
  const fake = new msbvm.Sandbox({ exec: async () => ({}) });
  await assert.rejects(fake.exec(['ls', 3]), TypeError);
});

test('a missing runtime binary says how to fix it', async () => {
  const before = process.env.MSBVM_BIN;
  process.env.MSBVM_BIN = '/nonexistent/msbvm';
  try {
    await assert.rejects(msbvm.Sandbox.create('fine'), (e) => e instanceof msbvm.RuntimeMissingError && /MSBVM_BIN/.test(e.message));
  } finally {
    if (before === undefined) delete process.env.MSBVM_BIN;
    else process.env.MSBVM_BIN = before;
  }
});

test('forking a missing snapshot is SnapshotNotFoundError', async () => {
  await assert.rejects(msbvm.Sandbox.fork('no-such-snapshot'), (e) => e instanceof msbvm.SnapshotNotFoundError && e.snapshot === 'no-such-snapshot');
});

test('pulling from an unreachable registry is ImageError', async () => {
  await assert.rejects(msbvm.pull('127.0.0.1:9/nothing:latest', { plainHttp: ['127.0.0.1:9'] }), msbvm.ImageError);
  await assert.rejects(msbvm.pull('NOT A REFERENCE'), msbvm.ImageError);
});

test('pulling the embedded default image needs no network', async () => {
  const events = [];
  const info = await msbvm.pull('msbvm-default:latest', { onProgress: (e) => events.push(e) });
  assert.match(info.reference, /msbvm-default:latest$/);
  assert.match(info.digest, /^sha256:/);
  assert.ok(info.layers >= 1);
});

test('listing an empty home gives no sandboxes', () => {
  assert.deepStrictEqual(msbvm.listSandboxes(), []);
});

/** Stands in for the addon's ExecStream: replays events, records control calls. */
function fakeStream(events) {
  const calls = [];
  return {
    calls,
    pid: 42,
    nextEvent: async () => (events.length ? events.shift() : null),
    writeStdin: async (b) => calls.push(['stdin', b.toString()]),
    signal: async (n) => calls.push(['signal', n]),
    close: async () => calls.push(['close']),
  };
}

test('an ExecStream iterates to "exited" and wait collects', async () => {
  const native = fakeStream([
    { kind: 'started', pid: 42 },
    { kind: 'stdout', data: Buffer.from('a') },
    { kind: 'stderr', data: Buffer.from('e') },
    { kind: 'stdout', data: Buffer.from('b') },
    { kind: 'exited', exitCode: 3, signal: null, timedOut: false },
  ]);
  const stream = new msbvm.ExecStream(native);
  assert.strictEqual(stream.pid, 42);
  const out = await stream.wait();
  assert.deepStrictEqual([out.exitCode, out.stdout.toString(), out.stderr.toString(), out.timedOut], [3, 'ab', 'e', false]);
  const rest = [];
  for await (const e of stream) rest.push(e);
  assert.deepStrictEqual(rest, []);
});

test('an ExecStream encodes text stdin, passes signals, and an abort closes it', async () => {
  const native = fakeStream([{ kind: 'started', pid: 1 }]);
  // nextEvent never resolves after the first event: only the abort can end wait().
  native.nextEvent = (() => {
    let first = true;
    return () => (first ? ((first = false), Promise.resolve({ kind: 'started', pid: 1 })) : new Promise(() => {}));
  })();
  const stream = new msbvm.ExecStream(native);
  await stream.writeStdin('hé');
  await stream.signal(15);
  const controller = new AbortController();
  const waiting = stream.wait({ signal: controller.signal });
  setTimeout(() => controller.abort(), 10);
  await assert.rejects(waiting, (e) => e.name === 'AbortError');
  assert.deepStrictEqual(native.calls, [['stdin', 'hé'], ['signal', 15], ['close']]);
});

test('the type declarations cover the exports', () => {
  const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8');
  const declared = new Set([...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]));
  assert.deepStrictEqual(new Set(Object.keys(msbvm)), declared);
});

test('native.d.ts (generated by napi build) declares exactly the addon\'s exports', () => {
  const dts = fs.readFileSync(path.join(__dirname, '..', 'native.d.ts'), 'utf8');
  assert.match(dts, /auto-generated by NAPI-RS/);
  const declared = new Set([...dts.matchAll(/^export declare (?:class|function) (\w+)/gm)].map((m) => m[1]));
  const addon = require('../msbvm.node');
  assert.deepStrictEqual(new Set(Object.keys(addon)), declared);
});

test('the declarations type-check against a typed use of the package (tsc --strict)', (t) => {
  const tsc = path.join(__dirname, '..', 'node_modules', '.bin', 'tsc');
  if (!fs.existsSync(tsc)) {
    t.skip('typescript is not installed here (scripts/build-typescript runs npm ci)');
    return;
  }
  const r = spawnSync(tsc, ['--noEmit', '--strict', '--target', 'es2022', '--module', 'commonjs',
    '--moduleResolution', 'node', '--lib', 'es2022,esnext.disposable', '--types', 'node',
    path.join(__dirname, 'types.ts')], { encoding: 'utf8', cwd: path.join(__dirname, '..') });
  assert.strictEqual(r.status, 0, r.stdout + r.stderr);
});

test('the package points MSBVM_BIN at its own runtime', () => {
  const bundled = path.join(__dirname, '..', 'bin', 'msbvm');
  if (!fs.existsSync(bundled)) {
    return; // this build of the package carries no runtime binary (see build-typescript)
  }
  const env = { ...process.env };
  delete env.MSBVM_BIN;
  const out = spawnSync(process.execPath, ['-e', "require('..'); console.log(process.env.MSBVM_BIN)"], { cwd: __dirname, env, encoding: 'utf8' });
  assert.strictEqual(out.stdout.trim(), bundled);
});

test('peers outside a sandbox say so', async () => {
  assert.strictEqual(msbvm.peer.inSandbox(), false);
  await assert.rejects(msbvm.peer.Peers.connect(), msbvm.NotInSandboxError);
});
