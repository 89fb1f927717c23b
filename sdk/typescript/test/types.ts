// A typed use of the package that `tsc --noEmit --strict` must accept (every line) and
// reject (each @ts-expect-error line: tsc fails when such a line has no error). Never run;
// test/unit.test.js type-checks it.

import * as msbvm from '..';
import {
  Sandbox,
  type CreateOptions,
  type ExecEvent,
  type ExecResult,
  type GuestEvent,
  type NetworkEvent,
  type PullEvent,
} from '..';

async function main(): Promise<void> {
  const abort = new AbortController();
  const options: CreateOptions = {
    image: 'alpine:3.20',
    cpus: 2,
    memory: 512,
    env: { A: 'b' },
    volumes: ['/srv:/srv:ro'],
    netAllow: ['example.com'],
    secrets: [{ name: 'KEY', value: 'v', hosts: ['api.example.com'] }],
    allowSpawn: { children: 2 },
    tmpfs: ['/scratch:64m'],
    plugins: ['audit:path=/tmp/audit.jsonl'],
    tlsIntercept: ['api.example.com'],
    tlsCa: 'sandbox',
    mtu: 9000,
    dnsServers: ['1.1.1.1'],
    signal: abort.signal,
  };
  const sb: Sandbox = await Sandbox.create('typed', options);
  const r: ExecResult = await sb.exec(['uname', '-a'], { timeout: 5, tty: [24, 80] });
  const code: number = r.exitCode;
  const out: Buffer = r.stdout;
  const timedOut: boolean = r.timedOut;
  for await (const e of await sb.execStream('sh', { signal: abort.signal })) {
    const kind: 'started' | 'stdout' | 'stderr' | 'exited' = e.kind;
    void (kind satisfies ExecEvent['kind']);
  }
  for await (const e of await sb.events('job.*')) {
    const ev: GuestEvent = e;
    await sb.reply(ev, 'job.ack', { ok: true });
  }
  const answer: GuestEvent = await sb.request('ask', { q: 1 }, { timeout: 2 });
  const stats: Record<string, unknown> = await sb.networkStats();
  const recorded: NetworkEvent[] = sb.networkEvents();
  const which: string = recorded[0].event;
  const later: NetworkEvent[] = sb.networkEventStream().poll();
  const bytes: number = await sb.dumpMemory('/tmp/guest.ram');
  const [fork] = await Sandbox.fork('snap', { count: 1, netAllow: ['example.com'] });
  await fork.remove();
  await msbvm.pull('alpine:3.20', {
    onProgress: (p: PullEvent) => {
      const k: string = p.kind;
      void k;
    },
  });
  if (msbvm.peer.inSandbox()) {
    const peers = await msbvm.peer.Peers.connect();
    await peers.create('child', { image: 'alpine:3.20', cpus: 1 });
    const o = await peers.exec('child', ['true'], { stdin: 'x' });
    void o.truncated;
  }
  try {
    await sb.remove();
  } catch (e) {
    if (e instanceof msbvm.NotFoundError) void e.sandbox;
    if (e instanceof msbvm.GuestFileError) void e.kind;
  }
  void [code, out, timedOut, answer, stats, which, later, bytes];

  // @ts-expect-error cpus is a number
  await Sandbox.create('bad', { cpus: 'two' });
  // @ts-expect-error a terminal size is [rows, cols]
  await sb.exec('sh', { tty: [24] });
  // @ts-expect-error no such option
  await Sandbox.create('bad', { cpu: 2 });
  // @ts-expect-error exec results are not streams
  for await (const e of await sb.exec('true')) void e;
}

void main;
