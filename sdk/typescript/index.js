'use strict';
// msbvm for Node.js: disposable Linux microVM sandboxes. The JavaScript API over the native
// addon (msbvm.node, napi-rs over the Rust SDK); types in index.d.ts.
//
// The runtime that owns each sandbox is the `msbvm` binary: $MSBVM_BIN, else the copy in this
// package's bin/ (put there by scripts/build-typescript), else `msbvm` on PATH.

const fs = require('node:fs');
const path = require('node:path');

const bundled = path.join(__dirname, 'bin', 'msbvm');
if (!process.env.MSBVM_BIN && fs.existsSync(bundled)) {
  process.env.MSBVM_BIN = bundled;
}

const native = require(process.env.MSBVM_NODE_ADDON || path.join(__dirname, 'msbvm.node'));

/**
 * Base class of every msbvm error; `message` is the full message, with the fix. The Rust
 * SDK's details become camelCase properties (`consoleTail`, `whereItWas`, `logTail`, a guest
 * file error's `kind`), and the name of the sandbox or snapshot concerned is `sandbox` or
 * `snapshot` (`name` stays the class's name, as for every JavaScript error).
 */
class MsbvmError extends Error {
  constructor(message, details) {
    super(message);
    this.name = new.target.name;
    for (const [key, value] of Object.entries(details || {})) {
      const prop =
        key === 'name'
          ? new.target.name === 'SnapshotNotFoundError'
            ? 'snapshot'
            : 'sandbox'
          : key.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
      this[prop] = value;
    }
  }
}

// One class per error kind of the Rust SDK (`NotFound` is `NotFoundError`), all deriving from
// MsbvmError; index.d.ts declares each.
const errors = { MsbvmError };
for (const kind of native.errorKinds()) {
  const name = `${kind}Error`;
  errors[name] = { [name]: class extends MsbvmError {} }[name];
}

/** The addon's error (JSON in its message) as the class of its kind; other errors as they are. */
function convert(e) {
  if (!(e instanceof Error) || !e.message.startsWith('{')) return e;
  let parsed;
  try {
    parsed = JSON.parse(e.message);
  } catch {
    return e;
  }
  const Class = errors[`${parsed.kind}Error`] || MsbvmError;
  return new Class(parsed.message, parsed.details);
}

/** Awaits `promise`, rethrowing the addon's errors as their classes. */
async function call(promise) {
  try {
    return await promise;
  } catch (e) {
    throw convert(e);
  }
}

/** Runs a synchronous addon call, rethrowing its errors as their classes. */
function callSync(f) {
  try {
    return f();
  } catch (e) {
    throw convert(e);
  }
}

/** A command as an argument vector: a string is one program (no shell parsing). */
function argv(command) {
  if (typeof command === 'string') return [command];
  if (!Array.isArray(command) || !command.every((a) => typeof a === 'string')) {
    throw new TypeError('a command is a string or an array of strings');
  }
  return command;
}

function toBuffer(data) {
  return typeof data === 'string' ? Buffer.from(data, 'utf8') : Buffer.from(data);
}

function abortError(signal) {
  return signal.reason instanceof Error
    ? signal.reason
    : new DOMException('This operation was aborted', 'AbortError');
}

/** Runs `start()` unless `signal` aborts first; on abort `cancel()` runs and the call rejects. */
async function abortable(signal, start, cancel) {
  if (!signal) return start();
  if (signal.aborted) throw abortError(signal);
  let onAbort;
  const aborted = new Promise((_, reject) => {
    onAbort = () => {
      Promise.resolve(cancel()).catch(() => {});
      reject(abortError(signal));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([start(), aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** A running process: an async iterator of events ("started", "stdout", "stderr", "exited"). */
class ExecStream {
  constructor(inner) {
    this._inner = inner;
    this._done = false;
  }

  /** The process's pid in the guest. */
  get pid() {
    return this._inner.pid;
  }

  async next() {
    if (this._done) return { done: true, value: undefined };
    const event = await call(this._inner.nextEvent());
    if (event == null) {
      this._done = true;
      return { done: true, value: undefined };
    }
    if (event.kind === 'exited') this._done = true;
    return { done: false, value: event };
  }

  async return() {
    await this.close();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Writes to the process's stdin (strings as UTF-8). */
  writeStdin(data) {
    return call(this._inner.writeStdin(toBuffer(data)));
  }

  /** Closes the process's stdin: it reads end of file. */
  closeStdin() {
    return call(this._inner.closeStdin());
  }

  /** Sends signal number `signal` (15 for SIGTERM) to the process. */
  signal(signal) {
    return call(this._inner.signal(signal));
  }

  /** Resizes the process's terminal. */
  resize(rows, cols) {
    return call(this._inner.resize(rows, cols));
  }

  /** Stops reading the process; the guest agent kills its process group. */
  close() {
    this._done = true;
    return call(this._inner.close());
  }

  /** Reads the process to its end: `{ exitCode, signal, timedOut, stdout, stderr }`. */
  async wait(options = {}) {
    return abortable(
      options.signal,
      async () => {
        const out = [];
        const err = [];
        let end = { exitCode: -1, signal: null, timedOut: false };
        for await (const event of this) {
          if (event.kind === 'stdout') out.push(event.data);
          else if (event.kind === 'stderr') err.push(event.data);
          else if (event.kind === 'exited') {
            end = { exitCode: event.exitCode, signal: event.signal ?? null, timedOut: !!event.timedOut };
          }
        }
        return { ...end, stdout: Buffer.concat(out), stderr: Buffer.concat(err) };
      },
      () => this.close(),
    );
  }
}

/** The guest's events as an async iterator of objects (`type`, `data`, `pid`, ...). */
class EventStream {
  constructor(inner) {
    this._inner = inner;
  }

  async next() {
    const text = await call(this._inner.next());
    return text == null ? { done: true, value: undefined } : { done: false, value: JSON.parse(text) };
  }

  async return() {
    await this.close();
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Ends the subscription. */
  close() {
    return call(this._inner.close());
  }
}

/** The network decisions a sandbox makes, read as they are recorded. */
class NetEventStream {
  constructor(inner) {
    this._inner = inner;
  }

  /** The events recorded since the last call, oldest first (an array, empty when none). */
  poll() {
    return JSON.parse(callSync(() => this._inner.poll()));
  }
}

function execOptions(options) {
  const { signal, ...rest } = options || {};
  return rest;
}

/** A running sandbox. Make one with `Sandbox.create` or attach with `Sandbox.get`. */
class Sandbox {
  constructor(inner) {
    this._inner = inner;
  }

  /**
   * Starts a sandbox called `name` and waits until it is ready. With `options.signal`, an
   * abort rejects at once with an AbortError; the boot goes on in the background and the
   * sandbox is removed as soon as it exists.
   */
  static async create(name, options = {}) {
    const { signal, ...rest } = options;
    if (signal && signal.aborted) throw abortError(signal);
    const pending = call(native.create(name, rest)).then((inner) => new Sandbox(inner));
    return abortable(
      signal,
      () => pending,
      () => pending.then((sb) => sb.remove()).catch(() => {}),
    );
  }

  /** Attaches to the running sandbox `name`. */
  static async get(name) {
    return new Sandbox(await call(native.get(name)));
  }

  /** Stops (if running) and removes the sandbox `name`. */
  static removeNamed(name) {
    return call(native.removeNamed(name));
  }

  /** Starts sandboxes from the snapshot `snapshot` (see `snapshot`). */
  static async fork(snapshot, options = {}) {
    const { netAllow, netDeny, ...rest } = options;
    if (netAllow || netDeny) {
      rest.netRules = [
        ...(netDeny || []).map((rule) => ({ allow: false, rule })),
        ...(netAllow || []).map((rule) => ({ allow: true, rule })),
      ];
    }
    const forks = await call(native.fork(snapshot, rest));
    return forks.map((f) => new Sandbox(f));
  }

  /** The sandbox's name. */
  get name() {
    return this._inner.name;
  }

  /** Its runtime's pid on the host. */
  get pid() {
    return this._inner.pid;
  }

  /**
   * Runs `command` to its end: `{ stdout, stderr, exitCode, signal, timedOut }`. With
   * `options.signal` (an AbortSignal), aborting stops the process and rejects.
   */
  async exec(command, options = {}) {
    if (!options.signal) return call(this._inner.exec(argv(command), execOptions(options)));
    const stream = await this.execStream(command, options);
    return stream.wait({ signal: options.signal });
  }

  /** Starts `command`: an `ExecStream` (an async iterator of events; stdin, signals, resize). */
  async execStream(command, options = {}) {
    const stream = new ExecStream(await call(this._inner.execStream(argv(command), execOptions(options))));
    if (options.signal) {
      if (options.signal.aborted) await stream.close();
      else options.signal.addEventListener('abort', () => stream.close().catch(() => {}), { once: true });
    }
    return stream;
  }

  /** The guest file `path` as a Buffer. */
  read(path) {
    return call(this._inner.readFile(path));
  }

  /** Writes `data` (a string as UTF-8, or bytes) to the guest file `path`. */
  write(path, data) {
    return call(this._inner.writeFile(path, toBuffer(data)));
  }

  /** The entries of the guest directory `path`. */
  list(path) {
    return call(this._inner.listDir(path));
  }

  /** What the guest path `path` is. */
  stat(path) {
    return call(this._inner.stat(path));
  }

  /** Makes the guest directory `path` (its parents too with `{ parents: true }`). */
  mkdir(path, options = {}) {
    return call(this._inner.mkdir(path, !!options.parents));
  }

  /** Removes the guest path `path` (a directory's contents too with `{ recursive: true }`). */
  removePath(path, options = {}) {
    return call(this._inner.removePath(path, !!options.recursive));
  }

  /** Copies a host file or directory into the guest. */
  copyIn(hostPath, guestPath) {
    return call(this._inner.copyIn(hostPath, guestPath));
  }

  /** Copies a guest file or directory to the host. */
  copyOut(guestPath, hostPath) {
    return call(this._inner.copyOut(guestPath, hostPath));
  }

  /** Replaces the network policy: deny rules, then allow rules, then the default. */
  setNetworkPolicy({ defaultAllow, allow = [], deny = [] }) {
    const rules = [
      ...deny.map((rule) => ({ allow: false, rule })),
      ...allow.map((rule) => ({ allow: true, rule })),
    ];
    return call(this._inner.setNetworkPolicy(!!defaultAllow, rules));
  }

  /** Sends an event of type `kind` with JSON-serialisable `data` to the guest. */
  emit(kind, data = null) {
    return call(this._inner.emit(kind, JSON.stringify(data)));
  }

  /** Subscribes to the guest's events of `types` (all when none are given). */
  async events(...types) {
    return new EventStream(await call(this._inner.events(types)));
  }

  /** Takes a snapshot named `name` of the running sandbox. */
  snapshot(name) {
    return call(this._inner.snapshot(name));
  }

  /** Publishes a guest TCP port ("[ADDR:]HOST_PORT:GUEST_PORT"); resolves to "ADDR:PORT". */
  publish(port) {
    return call(this._inner.publish(port));
  }

  /** Stops the guest, forcing it off after `timeout` seconds (default 5). */
  stop(timeout) {
    return call(this._inner.stop(timeout));
  }

  /** The network stack's counters (bytes, packets, flows, drops). */
  async networkStats() {
    return JSON.parse(await call(this._inner.networkStats()));
  }

  /** The network decisions still on record (flows, DNS queries, HTTP requests), oldest first. */
  networkEvents() {
    return JSON.parse(callSync(() => this._inner.networkEvents()));
  }

  /** A reader of the network decisions: each `poll()` returns those recorded since the last. */
  networkEventStream() {
    return new NetEventStream(this._inner.networkEventStream());
  }

  /** Writes all of the guest's RAM to the new host file `path` (mode 0600); resolves to its size. */
  dumpMemory(path) {
    return call(this._inner.dumpMemory(path));
  }

  /**
   * Sends the event `kind` with a fresh id to the guest's subscribers and resolves to the
   * guest's answer (the event whose `reply_to` names it); rejects with AgentTimeoutError
   * when none comes within `options.timeout` seconds (default 10).
   */
  async request(kind, data = null, options = {}) {
    const timeout = options.timeout === undefined ? 10 : options.timeout;
    return JSON.parse(await call(this._inner.request(kind, JSON.stringify(data), timeout)));
  }

  /** Answers the guest event `event` (as `events()` gave it) with an event of type `kind`. */
  reply(event, kind, data = null) {
    return call(this._inner.reply(JSON.stringify(event), kind, JSON.stringify(data)));
  }

  /** Forces the VM off now. */
  kill() {
    return call(this._inner.kill());
  }

  /** Stops the sandbox if running and removes everything it left. */
  remove() {
    return call(this._inner.remove());
  }
}

if (Symbol.asyncDispose) {
  // `await using sb = await Sandbox.create(...)` removes the sandbox at the end of the block.
  Sandbox.prototype[Symbol.asyncDispose] = function dispose() {
    return this.remove();
  };
}

/** Every sandbox of this user ($MSBVM_HOME), running or not. */
function listSandboxes() {
  return callSync(() => native.list());
}

/**
 * Pulls an OCI image into the local store. `plainHttp` names registries reached without TLS;
 * `onProgress` is called with each step (`{ kind, id, done, total }`).
 */
function pull(reference, options = {}) {
  return call(native.pull(reference, options.plainHttp || null, options.onProgress || null));
}

/** This sandbox's connection to the host's spawn service (code inside a sandbox only). */
class Peers {
  constructor(inner) {
    this._inner = inner;
  }

  /** Connects; outside a sandbox it rejects with NotInSandboxError. */
  static async connect() {
    return new Peers(await call(native.connectPeers()));
  }

  /** Creates the child `name` within this sandbox's grant. */
  create(name, options = {}) {
    return call(this._inner.create(name, options));
  }

  /** Runs `argv` in the child `name`: `{ exitCode, stdout, stderr, truncated }`. */
  exec(name, command, options = {}) {
    return call(this._inner.exec(name, argv(command), options.stdin == null ? null : toBuffer(options.stdin)));
  }

  /** The child's file `path`. */
  read(name, path) {
    return call(this._inner.readFile(name, path));
  }

  /** Writes the child's file `path`. */
  write(name, path, data) {
    return call(this._inner.writeFile(name, path, toBuffer(data)));
  }

  /** This sandbox's children. */
  list() {
    return call(this._inner.list());
  }

  /** Sends an event to the child `name`. */
  emit(name, kind, data = null) {
    return call(this._inner.emit(name, kind, JSON.stringify(data)));
  }

  /** Stops the child `name`. */
  stop(name) {
    return call(this._inner.stop(name));
  }

  /** Stops and removes the child `name`. */
  remove(name) {
    return call(this._inner.remove(name));
  }
}

/** Spawning from inside a sandbox: `peer.inSandbox()`, `await peer.Peers.connect()`. */
const peer = { Peers, inSandbox: () => native.inSandbox() };

module.exports = {
  Sandbox,
  ExecStream,
  EventStream,
  NetEventStream,
  listSandboxes,
  pull,
  peer,
  version: native.version(),
  errorKinds: native.errorKinds(),
  ...errors,
};
