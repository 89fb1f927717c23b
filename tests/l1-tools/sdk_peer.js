'use strict';
// The JavaScript peer API inside a sandbox, run by tests/tests/sdk_nested.rs in a sandbox that
// was given a spawn grant and the host's Node: it creates a child, runs a command in it with
// stdin, writes and reads a child's file, lists the children, removes the child, and has
// bad numbers refused. Prints one
// `CHECK js.peer ...` line with the same values as sdk_peer.py's.

const msbvm = require(process.env.MSBVM_JS_PACKAGE || 'msbvm');

async function main() {
  const peers = await msbvm.peer.Peers.connect();
  // Numbers outside what create() takes are refused before anything reaches the host.
  const refused = [];
  for (const bad of [{ cpus: -1 }, { cpus: 1.5 }, { memory: 1 }]) {
    try {
      await peers.create('jsbad', bad);
      refused.push('created');
    } catch (e) {
      refused.push(e instanceof msbvm.InvalidConfigError ? 'refused' : `other:${e.name}`);
    }
  }
  await peers.create('jsc', { memory: 256, network: false });
  const out = await peers.exec('jsc', ['sh', '-c', 'cat; echo from-child; exit 4'], { stdin: 'in-' });
  await peers.write('jsc', '/tmp/x', 'data');
  const got = (await peers.read('jsc', '/tmp/x')).toString();
  const names = (await peers.list()).map((p) => p.name);
  await peers.remove('jsc');
  const after = (await peers.list()).map((p) => p.name);
  return [
    msbvm.peer.inSandbox() ? 'inside' : 'outside',
    out.exitCode,
    out.stdout.toString().trim(),
    got,
    names.includes('jsc') ? 'listed' : `unlisted:${names}`,
    after.includes('jsc') ? 'left' : 'gone',
    [...new Set(refused)].join('/'),
  ].join(',');
}

main().then(
  (value) => console.log(`CHECK js.peer ${value}`),
  (e) => {
    console.error(e);
    console.log(`CHECK js.peer error:${e.name}`);
    process.exitCode = 1;
  },
);
