'use strict';
// The SDK conformance scenario in JavaScript (the same steps and CHECK values as
// sdk_conformance.py), run in L1 against real sandboxes by tests/tests/sdk_nested.rs.
// One `CHECK js.name value` line per step; a step that throws prints `error:<class>` instead.

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const msbvm = require(process.env.MSBVM_JS_PACKAGE || 'msbvm');

const HOST_PAGE = 'http://host.msbvm.internal:8000/';
// The secret's value, which must never reach the guest.
const SECRET_VALUE = 'js-secret-value-5be1c0d2';

/** Whether L1's grep finds `needle` in the file: "present", "absent" or "grep-error". */
function grepFile(needle, file) {
  const rc = require('node:child_process').spawnSync('grep', ['-q', '-F', needle, file]).status;
  return rc === 0 ? 'present' : rc === 1 ? 'absent' : 'grep-error';
}

// A guest shell that answers every `@P@.ask` host event with `@P@.answer` through the guest
// CLI's `msbvm reply` (the same in every language's scenario).
const ANSWERER = `msbvm events -f --type @P@.ask | while read -r ev; do msbvm reply "$(echo "$ev" | sed -n 's/.*"id":"\\([^"]*\\)".*/\\1/p')" @P@.answer '{"a":3}'; done`;

/** Whether a network event records a denial (a flow, or a DNS query policy refused). */
function isDenial(e) {
  return e.event === 'flow_denied' || (e.event === 'dns_query' && e.allowed === false);
}

function check(name, value) {
  console.log(`CHECK js.${name} ${value}`);
}

async function step(name, f) {
  try {
    check(name, await f());
  } catch (e) {
    console.error(e);
    check(name, `error:${e && e.name}`);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const repr = (buf) => JSON.stringify(buf.toString());

async function wgetRc(sb) {
  return (await sb.exec(['wget', '-q', '-T', '5', '-O', '/dev/null', HOST_PAGE])).exitCode;
}

function httpGet(host, port) {
  return new Promise((resolve) => {
    const chunks = [];
    const c = net.connect({ host, port }, () => c.end('GET / HTTP/1.0\r\n\r\n'));
    c.setTimeout(5000, () => c.destroy());
    c.on('data', (d) => chunks.push(d));
    c.on('close', () => resolve(Buffer.concat(chunks).toString()));
    c.on('error', () => resolve(''));
  });
}

async function scenario() {
  const sb = await msbvm.Sandbox.create('js-conf', {
    memory: 256,
    env: { GREETING: 'hi' },
    netAllow: ['host'],
    tmpfs: ['/scratch:8m'],
    secrets: [{ name: 'API_KEY', value: SECRET_VALUE, hosts: ['api.example.com'] }],
    plugins: ['audit:path=/tmp/js-audit.jsonl'],
  });
  try {
    check('created', sb.name);

    await step('exec', async () => {
      const r = await sb.exec(['sh', '-c', 'echo $GREETING; echo err >&2; exit 3']);
      return `${repr(r.stdout)},${repr(r.stderr)},${r.exitCode}`;
    });

    await step('exec_timeout', async () => {
      const r = await sb.exec(['sleep', '30'], { timeout: 1 });
      return `${r.timedOut},${r.exitCode}`;
    });

    await step('stream', async () => {
      const s = await sb.execStream(['head', '-c', String(10 << 20), '/dev/zero']);
      let total = 0;
      let code = null;
      const kinds = new Set();
      for await (const ev of s) {
        kinds.add(ev.kind);
        if (ev.kind === 'stdout') total += ev.data.length;
        else if (ev.kind === 'exited') code = ev.exitCode;
      }
      return `${total},${code},${kinds.has('started')}`;
    });

    await step('stdin', async () => {
      const s = await sb.execStream(['cat']);
      await s.writeStdin('ping ');
      await s.writeStdin(Buffer.from('pong'));
      await s.closeStdin();
      const out = await s.wait();
      return `${out.stdout.toString()},${out.exitCode}`;
    });

    await step('signal', async () => {
      const s = await sb.execStream(['sleep', '300']);
      await s.signal(15);
      return (await s.wait()).exitCode;
    });

    await step('cancelled', async () => {
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 3000);
      try {
        await sb.exec(['sleep', '301'], { signal: controller.signal });
        return 'not-cancelled';
      } catch (e) {
        if (e.name !== 'AbortError') throw e;
      }
      for (let i = 0; i < 30; i++) {
        const r = await sb.exec(['sh', '-c', "ps | grep -c '[s]leep 301'"]);
        if (r.stdout.toString().trim() === '0') return 'nothing-left';
        await sleep(1000);
      }
      return 'still-running';
    });

    await step('files', async () => {
      await sb.write('/tmp/f.txt', 'data');
      const got = await sb.read('/tmp/f.txt');
      const names = (await sb.list('/tmp')).map((e) => e.name);
      const st = await sb.stat('/tmp/f.txt');
      await sb.mkdir('/tmp/a/b', { parents: true });
      await sb.removePath('/tmp/a', { recursive: true });
      let missing = 'found';
      try {
        await sb.read('/tmp/a/b');
      } catch (e) {
        if (!(e instanceof msbvm.GuestFileError)) throw e;
        missing = e.kind;
      }
      const d = fs.mkdtempSync(path.join(os.tmpdir(), 'js-'));
      fs.writeFileSync(path.join(d, 'in.txt'), 'from-host');
      await sb.copyIn(path.join(d, 'in.txt'), '/tmp/in.txt');
      await sb.copyOut('/tmp/in.txt', path.join(d, 'out.txt'));
      const copied = fs.readFileSync(path.join(d, 'out.txt'), 'utf8');
      return `${got.toString()},${names.includes('f.txt')},${st.kind}:${st.size},${missing},${copied}`;
    });

    await step('fork', async () => {
      await sb.write('/tmp/before-snapshot', 'kept');
      const info = await sb.snapshot('js-snap');
      const forks = await msbvm.Sandbox.fork('js-snap', { name: 'js-fork', memory: 256 });
      const got = (await forks[0].read('/tmp/before-snapshot')).toString();
      const r = await forks[0].exec(['echo', 'forked']);
      for (const f of forks) await f.remove();
      return `${info.source},${forks.length},${got},${r.stdout.toString().trim()}`;
    });

    await step('publish', async () => {
      await sb.exec(['sh', '-c', 'mkdir -p /tmp/www && echo published > /tmp/www/index.html']);
      const server = await sb.execStream(['httpd', '-f', '-p', '8080', '-h', '/tmp/www']);
      const addr = await sb.publish('127.0.0.1:0:8080');
      const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
      let body = '';
      for (let i = 0; i < 30 && !body.includes('published'); i++) {
        body = await httpGet(host, port);
        if (!body.includes('published')) await sleep(1000);
      }
      await server.signal(15);
      await server.wait();
      return `${host},${port > 0 ? 'True' : 'False'},${body.split('published').length - 1}`;
    });

    await step('policy', async () => {
      const before = await wgetRc(sb);
      await sb.setNetworkPolicy({ defaultAllow: false });
      const denied = await wgetRc(sb);
      await sb.setNetworkPolicy({ defaultAllow: false, allow: ['host'] });
      const after = await wgetRc(sb);
      return `${before},${denied !== 0 ? 'denied' : 'allowed'},${after}`;
    });

    await step('netlog', async () => {
      const stream = sb.networkEventStream();
      stream.poll();
      await sb.setNetworkPolicy({ defaultAllow: false });
      await wgetRc(sb);
      const polled = [];
      for (let i = 0; i < 10 && !polled.some(isDenial); i++) {
        polled.push(...stream.poll());
        if (!polled.some(isDenial)) await sleep(500);
      }
      await sb.setNetworkPolicy({ defaultAllow: false, allow: ['host'] });
      const logged = sb.networkEvents().some(isDenial);
      const stats = await sb.networkStats();
      return [
        logged ? 'denied-logged' : 'missing',
        polled.some(isDenial) ? 'denied-polled' : 'missing',
        stats.flows_denied > 0 ? 'counted' : 'uncounted',
      ].join(',');
    });

    await step('secret', async () => {
      const seen = (await sb.exec(['sh', '-c', 'echo $API_KEY'])).stdout.toString().trim();
      const word = !seen ? 'unset' : seen.includes(SECRET_VALUE) ? 'leaked' : 'placeholder';
      const dump = path.join(os.tmpdir(), 'js-conf.ram');
      fs.rmSync(dump, { force: true });
      const size = await sb.dumpMemory(dump);
      const found = `${grepFile(seen, dump)},${grepFile(SECRET_VALUE, dump)}`;
      fs.rmSync(dump, { force: true });
      return `${word},${Math.floor(size / 1048576)},${found}`;
    });

    await step('tmpfs', async () => {
      const r = await sb.exec(['sh', '-c', "grep -c ' /scratch tmpfs ' /proc/mounts; df -k /scratch | tail -1 | awk '{print $2}'"]);
      return r.stdout.toString().trim().replace('\n', ',');
    });

    await step('plugin', async () => {
      await sb.exec(['echo', 'audited-js']);
      for (let i = 0; i < 20; i++) {
        const record = fs.existsSync('/tmp/js-audit.jsonl') ? fs.readFileSync('/tmp/js-audit.jsonl', 'utf8') : '';
        if (record.split('\n').some((l) => l.includes('"kind":"exec"') && l.includes('audited-js'))) return 'audited';
        await sleep(500);
      }
      return 'unaudited';
    });

    await step('reply', async () => {
      const asks = await sb.events('js.ask');
      const guest = await sb.execStream(['msbvm', 'request', 'js.ask', '{"q":1}', '--timeout', '60']);
      const { value: ask } = await asks.next();
      await sb.reply(ask, 'js.answer', { a: 2 });
      const out = await guest.wait();
      await asks.close();
      return `${out.exitCode},${out.stdout.toString().split('js.answer').length - 1}`;
    });

    await step('request', async () => {
      const guest = await sb.execStream(['sh', '-c', ANSWERER.replaceAll('@P@', 'js')]);
      // The guest subscribes on its own schedule: ask until it answers.
      let answer = null;
      for (let i = 0; i < 20 && !answer; i++) {
        try {
          answer = await sb.request('js.ask', { q: 2 }, { timeout: 3 });
        } catch (e) {
          if (!(e instanceof msbvm.AgentTimeoutError)) throw e;
        }
      }
      await guest.signal(15);
      await guest.wait();
      let unanswered = 'answered';
      try {
        await sb.request('js.nobody', null, { timeout: 1 });
      } catch (e) {
        unanswered = e.name.replace(/Error$/, '');
      }
      return answer ? `${answer.type},${answer.data.a},${unanswered}` : `no-answer,${unanswered}`;
    });

    await step('events_in', async () => {
      const stream = await sb.events('js.*');
      await sb.exec(['msbvm', 'emit', 'js.step', '{"i":1}']);
      const { value } = await Promise.race([stream.next(), sleep(60000).then(() => ({ value: null }))]);
      await stream.close();
      return `${value.type},${value.data.i},${value.pid != null ? 'True' : 'False'}`;
    });

    await step('events_out', async () => {
      const s = await sb.execStream(['msbvm', 'events', '-n', '1', '--type', 'js.reply']);
      const waiting = s.wait();
      let done = false;
      waiting.then(() => (done = true), () => (done = true));
      for (let i = 0; i < 60 && !done; i++) {
        await sb.emit('js.reply', { ok: 1 });
        await sleep(1000);
      }
      const out = await waiting;
      return `${out.exitCode},${out.stdout.toString().split('js.reply').length - 1}`;
    });

    await step('errors', async () => {
      let inUse;
      try {
        await msbvm.Sandbox.create('js-conf');
        return 'created-twice';
      } catch (e) {
        if (!(e instanceof msbvm.NameInUseError)) throw e;
        inUse = e.sandbox;
      }
      try {
        await msbvm.Sandbox.get('js-none');
        return 'found';
      } catch (e) {
        if (!(e instanceof msbvm.NotFoundError)) throw e;
        return `${inUse},notfound`;
      }
    });

    const attached = await msbvm.Sandbox.get('js-conf');
    check('get', (await attached.exec(['echo', 'attached'])).stdout.toString().trim());
  } finally {
    await sb.remove();
  }
  check('removed', msbvm.listSandboxes().every((i) => i.name !== 'js-conf') ? 'True' : 'False');
}

async function abortedCreate() {
  // A create aborted during the boot leaves nothing behind.
  const controller = new AbortController();
  setTimeout(() => controller.abort(), 200);
  let how = 'created';
  try {
    const sb = await msbvm.Sandbox.create('js-abort', { memory: 256, network: false, signal: controller.signal });
    await sb.remove();
  } catch (e) {
    how = e.name;
  }
  for (let i = 0; i < 90 && msbvm.listSandboxes().some((s) => s.name === 'js-abort'); i++) await sleep(1000);
  check('aborted_create', `${how},${msbvm.listSandboxes().some((s) => s.name === 'js-abort') ? 'left' : 'gone'}`);
}

(async () => {
  try {
    await scenario();
    await abortedCreate();
    check('scenario', 'done');
  } catch (e) {
    console.error(e);
    check('scenario', 'crashed');
    process.exitCode = 1;
  }
})();
